"""`optimize.int4_accuracy_level`: the precision MatMulNBits computes the int4 weights in, and `auto`.

The levels: 0 (unset) and 1 fp32, 2 fp16, 3 bf16, 4 int8 (onnxruntime's CPU kernels; its CUDA kernel
computes in the graph's fp16 at every level). Where a CPU lacks a kernel for a level, onnxruntime
computes in fp32, so `auto` measures every level rather than assume: each is scored against fp32 as
evaluate's kernel guard scores it, and clocked through onnxruntime-genai. onnxruntime #29849 saw
level 4 flip greedy tokens on Qwen3-0.6B and Phi-3.5-mini: the bar catches a model where it does.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ondevice.measure.onnx_scoring import LEVEL_RECORD, OnnxScorer, kernel_guard, set_accuracy_level

LEVELS = (0, 1, 2, 3, 4)
# `auto` takes a faster level only when it decodes this much faster than the most exact level near
# its speed: two levels that run the same kernel differ by run-to-run noise (a few %) alone, and noise
# must not pick the level (it would change the shipped model from run to run).
SPEED_MARGIN = 0.05
# How `auto` clocks each level: a 64-token prompt, 64 greedy tokens, median of 3 after a warm-up.
LEVEL_DECODE = {"threads": 0, "prompt_tokens": 64, "new_tokens": 64, "runs": 3, "warmup": 1}


class MemoScorer:
    """A scorer that computes each (example, adapter) once: auto's fp32 reference, compared with every level."""

    def __init__(self, scorer: OnnxScorer):
        self.scorer, self.provider, self.memo = scorer, scorer.provider, {}

    def log_probs(self, ex: dict, adapter: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        key = (id(ex), id(adapter))
        if key not in self.memo:
            self.memo[key] = self.scorer.log_probs(ex, adapter)
        return self.memo[key]


def level_decode(onnx_dir: str) -> dict:
    """Greedy decode speed of the graph in onnx_dir as it stands, through onnxruntime-genai."""
    from ondevice.measure.engines import onnx_decode

    return onnx_decode(onnx_dir, None, "", LEVEL_DECODE)


def pick_level(candidates: dict[int, dict], min_agreement: float) -> int:
    """The most exact of the passing levels that decode within SPEED_MARGIN of the fastest passing one."""
    from ondevice.atomic import UserError

    passing = {level: c for level, c in candidates.items() if c["passed"]}
    if not passing:  # on a CPU build level 0 is the reference itself; a CUDA build may miss the bar at every level
        seen = ", ".join(f"{level}: {c['top1_agreement']}" for level, c in candidates.items())
        raise UserError(f"optimize.int4_accuracy_level=auto: no level reaches optimize.min_top1_agreement="
                        f"{min_agreement} (agreement by level: {seen}); lower the bar or set a level")
    if len(passing) == 1:  # nothing to race (a CUDA build scores one level and clocks none)
        return next(iter(passing))
    fastest = max(c["decode_tok_s"] for c in passing.values())
    return min(level for level, c in passing.items() if c["decode_tok_s"] * (1 + SPEED_MARGIN) >= fastest)


def choose_accuracy_level(onnx_dir: Path, examples: list[dict], min_agreement: float, threads: int = 0,
                          on_cuda: bool = False) -> dict:
    """`optimize.int4_accuracy_level: auto`: every level is written into onnx_dir's graph in turn, scored
    against fp32 on onnxruntime's CPU kernels exactly as the kernel guard scores it (teacher-forced
    greedy agreement and KL over `examples`) and clocked through onnxruntime-genai in a child process;
    the graph is left at the fastest level whose agreement is at or above min_agreement.
    A CUDA build (on_cuda) computes in fp16 at every level: only level 0 is scored (the bar still holds),
    none clocked."""
    from ondevice.child import in_child

    exact = MemoScorer(OnnxScorer(onnx_dir, threads, accuracy_level=0, on_cpu=True))
    candidates = {}
    for level in (0,) if on_cuda else LEVELS:
        set_accuracy_level(onnx_dir, level)
        shipped = OnnxScorer(onnx_dir, threads)
        guard = kernel_guard(shipped, exact, {"eval": examples}, {"eval": None}, level, min_agreement)
        del shipped  # one session of the model at a time beside the reference
        scores = guard["on_eval"]
        candidates[level] = {"top1_agreement": scores["top1_agreement"], "mean_kl": scores["mean_kl"],
                             "passed": guard["passed"]}
        if not on_cuda:
            candidates[level]["decode_tok_s"] = round(in_child(level_decode, onnx_dir=str(onnx_dir))["decode_tok_s"], 2)
    chosen = pick_level(candidates, min_agreement)
    set_accuracy_level(onnx_dir, chosen)
    return {"chosen": chosen, "tokens": guard["on_eval"]["tokens"],
            "candidates": {str(level): c for level, c in candidates.items()}}


def ship_accuracy_level(onnx_dir: Path, o: dict, examples: list[dict] | None, threads: int = 0) -> dict:
    """optimize's last step: the level the model ships with (params.yaml's, or auto's choice on the
    encoded eval `examples`), recorded in the model folder beside the agreement bar, which evaluate's
    kernel guard then holds the shipped model (with adapters) to."""
    record = {"accuracy_level": o["int4_accuracy_level"], "chosen_by": "params",
              "min_top1_agreement": o["min_top1_agreement"]}
    if o["int4_accuracy_level"] == "auto":
        t0 = time.perf_counter()
        choice = choose_accuracy_level(onnx_dir, examples, o["min_top1_agreement"], threads, o["provider"] == "cuda")
        record.update(accuracy_level=choice.pop("chosen"), chosen_by="auto",
                      choose_seconds=round(time.perf_counter() - t0, 1), **choice)
    (Path(onnx_dir) / LEVEL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def auto_examples(eval_rows: Path, adapter, tokenizer_dir: Path, cfg) -> list[dict] | None:
    """The encoded eval rows `auto` scores the levels on (cfg: params.Optimize; adapter: the
    params.AdapterConfig the rows belong to), or None when a level is set. Called before the build,
    so a missing split fails in a second."""
    from transformers import AutoTokenizer

    from ondevice.atomic import UserError
    from ondevice.data import read_jsonl
    from ondevice.text import encode_example

    if cfg.int4_accuracy_level != "auto":
        return None
    if not Path(eval_rows).exists():
        raise UserError(f"{eval_rows} missing (optimize.int4_accuracy_level=auto scores on it); "
                        f"run `dvc repro data@{adapter.name}` or set a level")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = read_jsonl(Path(eval_rows))[: cfg.auto_level_rows]
    return [encode_example(tokenizer, adapter.template, r, adapter.seq_len) for r in rows]
