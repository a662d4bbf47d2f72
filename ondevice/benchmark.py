"""CPU token throughput of the shipped model, with and without its adapter, and PyTorch fp32 beside it.

Each engine runs in its own child process (`python -m ondevice.benchmark ENGINE ...`) so its peak
RSS is its own; all run in the same invocation on the same prompt, so ratios between them are
meaningful even where absolute numbers differ from machine to machine. Fixed prompt, warm-up runs,
median of the timed runs, greedy decoding forced to exactly `new_tokens` tokens.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = ("I am planning a two week trip through Portugal and Spain by train in late spring. "
          "I like old towns, seafood, long walks and small museums, and I want to keep the budget "
          "reasonable. Which cities should I include, how should I split the days, what should I "
          "book in advance, and what should I pack for the weather? ") * 40


def prompt_ids(tokenizer_encode, n: int) -> list[int]:
    ids = list(tokenizer_encode(PROMPT))
    if len(ids) < n:
        raise ValueError(f"benchmark prompt has {len(ids)} tokens, fewer than prompt_tokens={n}")
    return ids[:n]


def _median_run(run_once, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        run_once()
    results = [run_once() for _ in range(runs)]
    keys = results[0].keys()
    return {k: round(statistics.median(r[k] for r in results), 4) for k in keys}


def run_ort(onnx_dir: str, adapter: str | None, adapter_name: str, b: dict) -> dict:
    import onnxruntime_genai as og

    config = og.Config(onnx_dir)
    if b["threads"]:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": b["threads"], "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    tok = og.Tokenizer(model)
    adapters = None
    if adapter:
        adapters = og.Adapters(model)
        adapters.load(adapter, adapter_name)
    ids = prompt_ids(tok.encode, b["prompt_tokens"])
    total = len(ids) + b["new_tokens"]

    def once():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        gen = og.Generator(model, params)
        if adapters is not None:
            gen.set_active_adapter(adapters, adapter_name)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        t_prefill = time.perf_counter()
        gen.generate_next_token()
        t_first = time.perf_counter()
        n = 1
        while not gen.is_done():
            gen.generate_next_token()
            n += 1
        t_end = time.perf_counter()
        return {"prefill_tok_s": len(ids) / (t_prefill - t0), "ttft_ms": (t_first - t0) * 1000,
                "decode_tok_s": (n - 1) / (t_end - t_first), "generated": n}

    return _median_run(once, b["runs"], b["warmup"])


def run_torch(model_dir: str, b: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if b["threads"]:
        torch.set_num_threads(b["threads"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids(lambda s: tok(s, add_special_tokens=False)["input_ids"], b["prompt_tokens"])])
    n_new = b["new_tokens"]

    @torch.no_grad()
    def once():
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        t_first = time.perf_counter()
        model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
        t_end = time.perf_counter()
        ttft = t_first - t0
        return {"prefill_tok_s": ids.shape[1] / ttft, "ttft_ms": ttft * 1000,
                "decode_tok_s": (n_new - 1) / max(t_end - t_first - ttft, 1e-9), "generated": n_new}

    return _median_run(once, b["runs"], b["warmup"])


def weight_bytes_per_token(onnx_dir: Path) -> int:
    """Bytes of int4 weights, scales and zero points that one decode step reads: every MatMulNBits
    initializer (the tied head included); the embedding reads one row, which is negligible."""
    import math

    import onnx

    model = onnx.load(str(Path(onnx_dir) / "model.onnx"), load_external_data=False)
    sizes = {init.name: math.prod(init.dims) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
             for init in model.graph.initializer}
    used = {name for node in model.graph.node if node.op_type == "MatMulNBits" for name in node.input[1:]}
    return sum(sizes.get(name, 0) for name in used if name)


def memory_bandwidth_gb_s(megabytes: int = 256, repeats: int = 5) -> float:
    """Best of a few large array copies (read + write), the ceiling a decode step streams against."""
    import numpy as np

    src = np.ones(megabytes * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return round(2 * src.nbytes / best / 1e9, 2)


def _child(engine: str, args: dict) -> dict:
    """Run one engine in a fresh interpreter; returns its numbers plus its peak RSS."""
    cmd = [sys.executable, "-m", "ondevice.benchmark", engine, json.dumps(args)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark {engine} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark(onnx_dir: Path, adapter_path: Path, adapter_name: str, float_dir: Path, b: dict) -> tuple[dict, list]:
    common = {"b": b, "adapter_name": adapter_name}
    results = {
        "ort_int4": _child("ort", {**common, "onnx_dir": str(onnx_dir), "adapter": None}),
        "ort_int4_adapter": _child("ort", {**common, "onnx_dir": str(onnx_dir), "adapter": str(adapter_path)}),
    }
    if b["torch_baseline"]:
        results["torch_fp32"] = _child("torch", {**common, "model_dir": str(float_dir)})
    base, with_adapter = results["ort_int4"], results["ort_int4_adapter"]
    metrics = {name: r for name, r in results.items()}
    metrics["threads"] = b["threads"] or os.cpu_count()
    metrics["cpu_count"] = os.cpu_count()
    metrics["model_mb"] = round(sum(p.stat().st_size for p in Path(onnx_dir).glob("model.onnx*")) / 1e6, 2)
    metrics["adapter_mb"] = round(Path(adapter_path).stat().st_size / 1e6, 3)
    metrics["adapter_decode_cost_pct"] = round(100 * (1 - with_adapter["decode_tok_s"] / base["decode_tok_s"]), 2)
    # Decode is memory-bound: tok/s can at best be bandwidth / bytes read per token.
    metrics["weight_mb_per_token"] = round(weight_bytes_per_token(onnx_dir) / 1e6, 2)
    metrics["memory_bandwidth_gb_s"] = memory_bandwidth_gb_s()
    roofline = metrics["memory_bandwidth_gb_s"] * 1e3 / metrics["weight_mb_per_token"]
    metrics["roofline_tok_s"] = round(roofline, 1)
    metrics["roofline_fraction"] = round(base["decode_tok_s"] / roofline, 3)
    metrics["roofline_fraction_adapter"] = round(with_adapter["decode_tok_s"] / roofline, 3)
    if "torch_fp32" in results:
        torch_decode = results["torch_fp32"]["decode_tok_s"]
        metrics["speedup_vs_torch_fp32"] = round(with_adapter["decode_tok_s"] / torch_decode, 2)
    plot = [{"engine": name, "decode_tok_s": r["decode_tok_s"], "prefill_tok_s": r["prefill_tok_s"],
             "ttft_ms": r["ttft_ms"], "peak_rss_mb": r["peak_rss_mb"]} for name, r in results.items()]
    return metrics, plot


def main(argv: list[str]) -> None:
    engine, args = argv[0], json.loads(argv[1])
    if engine == "ort":
        out = run_ort(args["onnx_dir"], args["adapter"], args["adapter_name"], args["b"])
    elif engine == "torch":
        out = run_torch(args["model_dir"], args["b"])
    else:
        raise SystemExit(f"unknown engine {engine}")
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
