"""Where an adapter's decode time goes, on the shipped model (README "GPU path": the adapter cost).

Two measurements of the same build, each in its own child process:
- `profiled_decode`: onnxruntime's own profile (the session option enable_profiling) of greedy answers
  through onnxruntime-genai, as the seed's client runs them, with or without an adapter. Per warm
  decode step: the time inside nodes, by op and provider, and outside them (feeds, copies, the sync).
- `feed_steps`: the same graph through onnxruntime's Run (what onnxruntime-genai calls), one
  decode-shaped step: no LoRA feeds; the adapter's tensors from host memory; and, on a CUDA build,
  the same tensors resident on the GPU. If onnxruntime-genai's adapter costs what the host feed
  costs, its tensors reach the session as host memory.
"""
from __future__ import annotations

import collections
import json
import statistics
import time
from pathlib import Path

from ondevice import onnx_folder
from ondevice.measure.profile import node_times

STEPS = 30  # Run calls per feed kind, interleaved; the first 5 warm up


def summarize_profile(path: Path) -> dict:
    """Median per-step figures over the warm decode steps of one onnxruntime profile file."""
    runs, nodes = node_times(json.loads(Path(path).read_text()))
    per_run = [collections.Counter() for _ in runs]
    for counter, step in zip(per_run, nodes, strict=True):
        for n in step:
            provider = n["args"].get("provider", "?").removesuffix("ExecutionProvider")
            counter[f'{n["args"].get("op_name")}@{provider}'] += n["dur"]
            counter[" in_nodes"] += n["dur"]
            counter[" nodes"] += 1
    longest = max(r["dur"] for r in runs)  # prefills are the long runs; skip them and the first decode steps
    decode = [k for k, r in enumerate(runs) if r["dur"] < 0.5 * longest][4:]
    if not decode:
        raise ValueError(f"{path}: no warm decode steps in the profile")
    ops = collections.Counter()
    for k in decode:
        ops.update(per_run[k])
    run_us = statistics.median(runs[k]["dur"] for k in decode)
    in_nodes = statistics.median(per_run[k][" in_nodes"] for k in decode)
    return {"decode_steps": len(decode), "run_us": round(run_us, 1), "in_nodes_us": round(in_nodes, 1),
            "outside_nodes_us": round(run_us - in_nodes, 1),
            "nodes_per_step": statistics.median(per_run[k][" nodes"] for k in decode),
            "ops_us_per_step": {k: round(v / len(decode), 1) for k, v in ops.most_common(20) if not k.startswith(" ")}}


def profiled_decode(onnx_dir: str, adapter: str | None, prefix: str, prompt_tokens: int = 64,
                    new_tokens: int = 32, rounds: int = 4) -> dict:
    from ondevice.measure.engines import prompt_ids, timed_answer
    from ondevice.runtime.client import open_model

    def answer():  # the session writes its profile when it closes, i.e. when this returns
        model, tok, adapters = open_model(Path(onnx_dir), {"a": Path(adapter)} if adapter else None,
                                          enable_profiling=prefix)
        ids = prompt_ids(tok.encode, prompt_tokens)
        return [timed_answer(model, adapters, "a" if adapter else None, ids, new_tokens) for _ in range(rounds)]

    decode_tok_s = statistics.median(r["decode_tok_s"] for r in answer())
    newest = max(Path(prefix).parent.glob(f"{Path(prefix).name}*.json"), key=lambda p: p.stat().st_mtime)
    return {"decode_tok_s_profiled": round(decode_tok_s, 2), **summarize_profile(newest)}


def feed_steps(onnx_dir: str, adapter: str) -> dict:
    import numpy as np
    import onnxruntime as ort

    from ondevice.export.onnx_lora import read_adapter
    from ondevice.measure.onnx_scoring import empty_past
    from ondevice.runtime.cuda_check import model_providers

    cuda = "cuda" in model_providers(Path(onnx_dir))
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # LoRA defaults are overridable initializers on purpose
    session = ort.InferenceSession(str(Path(onnx_dir) / "model.onnx"), opts, providers=providers)
    decoder = onnx_folder.decoder(onnx_dir)
    step = {"input_ids": np.array([[1]], np.int64), "attention_mask": np.ones((1, 1), np.int64),
            **empty_past(session, decoder)}
    lora = read_adapter(Path(adapter))

    def values(arrays, device):
        return {k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in arrays.items()}

    feeds = {"no_lora_feed": values(step, "cpu"), "lora_from_host": {**values(step, "cpu"), **values(lora, "cpu")}}
    if cuda:
        feeds["lora_on_gpu"] = {**values(step, "cpu"), **values(lora, "cuda")}
    times = {k: [] for k in feeds}
    for i in range(STEPS):
        for kind, feed in feeds.items():
            t0 = time.perf_counter()
            session.run_with_ort_values(["logits"], feed)
            if i >= 5:
                times[kind].append((time.perf_counter() - t0) * 1000)
    return {"adapter_mb": round(sum(v.nbytes for v in lora.values()) / 1e6, 2),
            "step_ms": {k: round(statistics.median(v), 3) for k, v in times.items()}}


def adapter_cost(onnx_dir: Path, adapter: Path, work: Path) -> dict:
    from ondevice.child import in_child

    result = {"base": in_child(profiled_decode, onnx_dir=str(onnx_dir), adapter=None, prefix=str(work / "base")),
              "adapter": in_child(profiled_decode, onnx_dir=str(onnx_dir), adapter=str(adapter),
                                  prefix=str(work / "adapter"))}
    base, tuned = result["base"], result["adapter"]
    result["adapter_adds_us"] = {k: round(tuned[k] - base[k], 1) for k in ("run_us", "in_nodes_us", "outside_nodes_us")}
    result["onnxruntime_run"] = in_child(feed_steps, onnx_dir=str(onnx_dir), adapter=str(adapter))
    for r in (result["base"], result["adapter"], result["onnxruntime_run"]):
        r.pop("peak_rss_mb", None)
    return result
