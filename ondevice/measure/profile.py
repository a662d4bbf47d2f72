"""Where a decode step's time goes: onnxruntime's own per-node profile of the shipped model.

Runs one greedy generation through onnxruntime-genai with session profiling on, then sums the
kernel time of every node by what it is (int4 weight matmuls, LoRA, attention, ...) over the decode
steps only (the first session run is the prefill). The gap between a step's wall time and the
session's run time is onnxruntime-genai's own work around the session (KV cache, logits, search).
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path


def category(node_name: str, op: str) -> str:
    if "/lora/" in node_name:
        return "lora"
    if op == "MatMulNBits":
        return "lm_head" if "lm_head" in node_name else "int4_matmul"
    if op == "GroupQueryAttention":
        return "attention"
    if op in ("SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"):
        return "norm"
    if op == "RotaryEmbedding":
        return "rotary"
    if op in ("GatherBlockQuantized", "Gather"):
        return "embedding"
    return "other:" + op


def node_times(trace: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """onnxruntime's profile as (its session runs in time order, each run's node kernel events): the one
    reader of a profile file, shared with measure.adapter_cost."""
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])
    nodes = sorted((e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    per_run, i = [[] for _ in runs], 0
    for n in nodes:  # both sorted by start: walk them together
        while i < len(runs) and n["ts"] > runs[i]["ts"] + runs[i]["dur"]:
            i += 1
        if i < len(runs) and n["ts"] >= runs[i]["ts"]:
            per_run[i].append(n)
    return runs, per_run


def summarize(trace: list[dict]) -> dict:
    """Mean per decode step of one answer's profile: every session run after the first (the prefill)."""
    runs, per_run = node_times(trace)
    if len(runs) < 2:
        raise ValueError("profile has fewer than two session runs (prefill + decode)")
    per_category, per_op = defaultdict(float), defaultdict(float)
    nodes = 0
    for e in (n for step in per_run[1:] for n in step):
        op = e.get("args", {}).get("op_name", "?")
        per_category[category(e["name"], op)] += e["dur"]
        per_op[op] += e["dur"]
        nodes += 1
    steps = len(runs) - 1
    run_us = sum(r["dur"] for r in runs[1:]) / steps
    kernel_us = sum(per_category.values()) / steps
    return {
        "decode_steps": steps,
        "session_run_us_per_token": round(run_us, 1),
        "kernel_us_per_token": round(kernel_us, 1),
        "nodes_per_token": round(nodes / steps, 1),
        "by_category_us_per_token": {k: round(v / steps, 1) for k, v in sorted(per_category.items(),
                                                                            key=lambda kv: -kv[1])},
        "by_op_us_per_token": {k: round(v / steps, 1) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
    }


def profile(onnx_dir: str, adapter: str | None, name: str, prompt_tokens: int, new_tokens: int,
            threads: int) -> dict:
    """One profiled greedy decode of the benchmark prompt, base (adapter None) or with the adapter."""
    from ondevice.measure.engines import prompt_ids, timed_answer
    from ondevice.runtime.client import kv_capacity_floor, open_model

    with tempfile.TemporaryDirectory() as tmp:
        model, tok, adapters = open_model(onnx_dir, {name: adapter} if adapter else None, threads,
                                          enable_profiling=str(Path(tmp) / "ort_profile"))
        tok_s = timed_answer(model, adapters, name if adapters else None, prompt_ids(tok.encode, prompt_tokens),
                             new_tokens, kv_capacity_floor(onnx_dir))["decode_tok_s"]
        del adapters, tok, model  # the profile file is written when the session closes
        files = sorted(Path(tmp).glob("ort_profile*.json"))
        if not files:
            raise RuntimeError("onnxruntime wrote no profile file")
        trace = json.loads(files[-1].read_text())
    out = summarize(trace)
    wall_us = 1e6 / tok_s
    out["wall_us_per_token"] = round(wall_us, 1)
    out["outside_session_us_per_token"] = round(wall_us - out["session_run_us_per_token"], 1)
    out["decode_tok_s_while_profiling"] = round(tok_s, 1)
    return out
