"""CPU token throughput of the shipped model, alone and with each adapter, with peers beside it
(PyTorch fp32; llama.cpp on the base model's GGUF when asked), adapter switching, and how decode
speed and memory grow with context length and threads.

Each engine runs in its own child process (`python -m ondevice.benchmark ENGINE ...`) so its peak
RSS is its own; all run in the same invocation on the same prompt, so ratios between them are
meaningful even where absolute numbers differ from machine to machine. Fixed prompt, warm-up runs,
median of the timed runs, greedy decoding forced to exactly `new_tokens` tokens.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ondevice.runtime import kv_capacity_floor, open_model

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


def decode_tok_s(model, adapters, adapter_name: str | None, ids: list[int], new_tokens: int,
                 capacity_floor: int = 0) -> float:
    """One greedy answer of exactly `new_tokens` after the prompt; tok/s of the steps after the first."""
    return timed_generate(model, adapters, adapter_name, ids, new_tokens, capacity_floor)["decode_tok_s"]


def timed_generate(model, adapters, adapter_name: str | None, ids: list[int], new_tokens: int,
                   capacity_floor: int = 0) -> dict:
    """One greedy answer of exactly `new_tokens`: prefill tok/s, time to first token, decode tok/s.
    capacity_floor: the model's sliding window (runtime.kv_capacity_floor), the least max_length."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = len(ids) + new_tokens
    params.set_search_options(max_length=max(total, capacity_floor), min_length=total, do_sample=False)
    gen = og.Generator(model, params)
    if adapters is not None and adapter_name:
        gen.set_active_adapter(adapters, adapter_name)
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    t_prefill = time.perf_counter()
    gen.generate_next_token()
    t_first = time.perf_counter()
    n = 1
    while n < new_tokens and not gen.is_done():
        gen.generate_next_token()
        n += 1
    t_end = time.perf_counter()
    return {"prefill_tok_s": len(ids) / (t_prefill - t0), "ttft_ms": (t_first - t0) * 1000,
            "decode_tok_s": (n - 1) / (t_end - t_first), "generated": n}


def run_ort(onnx_dir: str, adapter: str | None, adapter_name: str, b: dict) -> dict:
    model, tok, adapters = open_model(onnx_dir, {adapter_name: adapter} if adapter else None, b["threads"])
    ids, floor = prompt_ids(tok.encode, b["prompt_tokens"]), kv_capacity_floor(onnx_dir)
    return _median_run(lambda: timed_generate(model, adapters, adapter_name, ids, b["new_tokens"], floor),
                       b["runs"], b["warmup"])


def run_switch(onnx_dir: str, adapters: dict[str, str], b: dict) -> dict:
    """All adapters loaded at once; every request picks another one, as a multi-task app would."""
    import onnxruntime_genai as og

    model, tok, _ = open_model(onnx_dir, None, b["threads"])
    rss_base = _rss_now_mb()
    loaded, load_ms = og.Adapters(model), {}
    for name, path in adapters.items():
        t0 = time.perf_counter()
        loaded.load(path, name)
        load_ms[name] = round((time.perf_counter() - t0) * 1000, 3)
    rss_loaded = _rss_now_mb()
    ids = prompt_ids(tok.encode, min(b["prompt_tokens"], 16))
    names, steps, floor = list(adapters), 8, kv_capacity_floor(onnx_dir)
    set_us, decode = [], []
    for i in range(b["switches"] + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max(len(ids) + steps, floor),
                                  min_length=len(ids) + steps, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.set_active_adapter(loaded, names[i % len(names)])
        t1 = time.perf_counter()
        gen.append_tokens(ids)
        gen.generate_next_token()
        t2 = time.perf_counter()
        for _ in range(steps - 1):
            gen.generate_next_token()
        t3 = time.perf_counter()
        if i:  # the first request warms up
            set_us.append((t1 - t0) * 1e6)
            decode.append((steps - 1) / (t3 - t2))
    return {"adapters_loaded": len(names), "adapter_load_ms": load_ms,
            "rss_before_adapters_mb": rss_base, "rss_all_adapters_mb": rss_loaded,
            "set_active_adapter_us_median": round(statistics.median(set_us), 2),
            "set_active_adapter_us_max": round(max(set_us), 2),
            "switching_decode_tok_s": round(statistics.median(decode), 2)}


def run_context(onnx_dir: str, adapter: str | None, adapter_name: str, b: dict) -> dict:
    """Decode speed after a prompt of `context` tokens (the KV cache it attends over grows with it)."""
    return run_ort(onnx_dir, adapter, adapter_name, {**b, "prompt_tokens": b["context"],
                                                    "new_tokens": b["sweep_new_tokens"], "runs": 1, "warmup": 1})


def _open_llama_cpp(gguf: str, b: dict):
    """llama.cpp on the GGUF with the benchmark's threads, and the benchmark prompt in its tokens."""
    from llama_cpp import Llama

    threads = b["threads"] or os.cpu_count()
    llm = Llama(model_path=gguf, n_ctx=b["prompt_tokens"] + b["new_tokens"] + 8, n_threads=threads,
                n_threads_batch=threads, n_batch=512, verbose=False)
    return llm, prompt_ids(lambda s: llm.tokenize(s.encode(), add_bos=False, special=False), b["prompt_tokens"])


def _llama_cpp_generate(llm, ids: list[int], n_new: int) -> dict:
    """One greedy answer of exactly `n_new` tokens, timed like run_ort's."""
    llm.reset()
    t0 = time.perf_counter()
    n, t_first = 0, t0
    for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        n += 1
        if n == 1:
            t_first = time.perf_counter()
        if n == n_new:
            break
    t_end = time.perf_counter()
    ttft = t_first - t0
    return {"prefill_tok_s": len(ids) / ttft, "ttft_ms": ttft * 1000,
            "decode_tok_s": (n - 1) / (t_end - t_first), "generated": n}


def run_llama_cpp(gguf: str, b: dict) -> dict:
    """The peer engine: llama.cpp (llama-cpp-python) on the base model's Q4 GGUF, same prompt, greedy."""
    llm, ids = _open_llama_cpp(gguf, b)
    return _median_run(lambda: _llama_cpp_generate(llm, ids, b["new_tokens"]), b["runs"], b["warmup"])


def _proc_status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not getrusage's ru_maxrss: Linux carries that
    across exec, so a child would report its parent's peak (the bandwidth probe's 512 MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _rss_now_mb() -> float:
    return _proc_status_mb("VmRSS")


def run_paired(onnx_dir: str, adapters: dict[str, str], b: dict, gguf: str | None = None) -> dict:
    """Base and every adapter in one process, runs interleaved (base, a, b, base, a, b, ...): the
    adapter cost as a paired comparison, free of the drift between separate processes. With a
    GGUF, llama.cpp takes its turn in the same rounds (one engine runs at a time)."""
    model, tok, loaded = open_model(onnx_dir, adapters, b["threads"])
    ids, floor = prompt_ids(tok.encode, b["prompt_tokens"]), kv_capacity_floor(onnx_dir)
    labels = [None, *adapters]
    speeds = {label: [] for label in labels}
    llama = _open_llama_cpp(gguf, b) if gguf else None
    if llama:
        speeds["llama_cpp"] = []
    for round_ in range(b["warmup"] + b["runs"]):
        if llama:
            tok_s = _llama_cpp_generate(*llama, b["new_tokens"])["decode_tok_s"]
            if round_ >= b["warmup"]:
                speeds["llama_cpp"].append(tok_s)
        for label in labels:
            tok_s = decode_tok_s(model, loaded, label, ids, b["new_tokens"], floor)
            if round_ >= b["warmup"]:
                speeds[label].append(tok_s)
    base = statistics.median(speeds[None])
    out = {"base_decode_tok_s": round(base, 2)}
    for name in adapters:
        tok_s = statistics.median(speeds[name])
        out[f"{name}_decode_tok_s"] = round(tok_s, 2)
        out[f"{name}_cost_pct"] = round(100 * (1 - tok_s / base), 2)
    if llama:
        out["llama_cpp_decode_tok_s"] = round(statistics.median(speeds["llama_cpp"]), 2)
    return out


def run_torch(model_dir: str, b: dict, device: str = "cpu") -> dict:
    """The PyTorch peer: fp32 `generate` on the CPU, or bf16 on the GPU (synchronised before each clock)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if b["threads"] and device == "cpu":
        torch.set_num_threads(b["threads"])
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    ids = torch.tensor([prompt_ids(lambda s: tok(s, add_special_tokens=False)["input_ids"], b["prompt_tokens"])],
                       device=device)
    n_new = b["new_tokens"]

    def clock():
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter()

    @torch.no_grad()
    def once():
        t0 = clock()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        t_first = clock()
        model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
        t_end = clock()
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


def benchmark(onnx_dir: Path, adapters: dict[str, Path], float_dir: Path, b: dict,
              gguf: Path | None = None) -> tuple[dict, dict]:
    """Every engine in its own child, all in this one run. Returns (metrics, plot rows by plot name)."""
    onnx, paths = str(onnx_dir), {n: str(p) for n, p in adapters.items()}
    first = next(iter(adapters))  # the sweeps and the profile run base and the first adapter
    base_and_first = (("base", None), (first, paths[first]))
    results = {"ort_int4": _child("ort", {"b": b, "onnx_dir": onnx, "adapter": None, "adapter_name": ""})}
    for name, path in paths.items():
        results[f"ort_int4_{name}"] = _child("ort", {"b": b, "onnx_dir": onnx, "adapter": path, "adapter_name": name})
    if b["torch_baseline"]:
        results["torch_fp32"] = _child("torch", {"b": b, "model_dir": str(float_dir)})
    if gguf:
        results["llama_cpp_q4"] = _child("llama_cpp", {"b": b, "gguf": str(gguf)})
    metrics = dict(results)
    metrics["switching"] = _child("switch", {"b": b, "onnx_dir": onnx, "adapters": paths})
    metrics["threads"] = b["threads"] or os.cpu_count()
    metrics["cpu_count"] = os.cpu_count()
    metrics["model_mb"] = round(sum(p.stat().st_size for p in Path(onnx_dir).glob("model.onnx*")) / 1e6, 2)
    metrics["adapter_mb"] = {n: round(Path(p).stat().st_size / 1e6, 3) for n, p in adapters.items()}
    # The adapter cost from one process with runs interleaved: separate processes drift by more
    # than the cost itself on a shared box.
    paired = _child("paired", {"b": b, "onnx_dir": onnx, "adapters": paths, "gguf": str(gguf) if gguf else None})
    metrics["paired"] = paired
    cost = {n: paired[f"{n}_cost_pct"] for n in adapters}
    metrics["adapter_decode_cost_pct"] = cost
    metrics["adapter_decode_cost_pct_max"] = max(cost.values())
    # Decode is memory-bound: tok/s can at best be bandwidth / bytes read per token.
    metrics["weight_mb_per_token"] = round(weight_bytes_per_token(onnx_dir) / 1e6, 2)
    metrics["memory_bandwidth_gb_s"] = memory_bandwidth_gb_s()
    roofline = metrics["memory_bandwidth_gb_s"] * 1e3 / metrics["weight_mb_per_token"]
    slowest_adapter = min(paired[f"{n}_decode_tok_s"] for n in adapters)
    metrics["roofline_tok_s"] = round(roofline, 1)
    metrics["roofline_fraction"] = round(paired["base_decode_tok_s"] / roofline, 3)
    metrics["roofline_fraction_adapter"] = round(slowest_adapter / roofline, 3)
    if "torch_fp32" in results:
        slowest = min(results[f"ort_int4_{n}"]["decode_tok_s"] for n in adapters)
        metrics["speedup_vs_torch_fp32"] = round(slowest / results["torch_fp32"]["decode_tok_s"], 2)
    if "llama_cpp_q4" in results:
        # the ratio from the interleaved rounds (same process, same minutes), not separate processes
        llama = paired["llama_cpp_decode_tok_s"]
        metrics["adapter_vs_llama_cpp"] = round(slowest_adapter / llama, 3)
        metrics["base_vs_llama_cpp"] = round(paired["base_decode_tok_s"] / llama, 3)
    if b["profile"]:  # per-node time of one decode run: where the time goes
        metrics["profile"] = {label: _child("profile", {"b": b, "onnx_dir": onnx, "adapter": path,
                                                        "adapter_name": first})
                              for label, path in base_and_first}
    plots = {"engines": [{"engine": name, "decode_tok_s": r["decode_tok_s"], "prefill_tok_s": r["prefill_tok_s"],
                          "ttft_ms": r["ttft_ms"], "peak_rss_mb": r["peak_rss_mb"]} for name, r in results.items()]}
    # sweep key -> (engine, what each point varies, the second column of its plot)
    sweeps = {"context": ("context", "context_lengths", "peak_rss_mb"),
              "threads": ("ort", "thread_counts", "prefill_tok_s")}
    for key, (engine, values, column) in sweeps.items():
        plots[key] = []
        for value in b[values]:
            for label, path in base_and_first:
                r = _child(engine, {"b": {**b, key: value}, "onnx_dir": onnx, "adapter": path, "adapter_name": first})
                plots[key].append({key: value, "model": label, "decode_tok_s": r["decode_tok_s"], column: r[column]})
    return metrics, plots


def _profile_engine(args: dict) -> dict:
    from ondevice.profile import profile

    b = args["b"]
    return profile(Path(args["onnx_dir"]), args["adapter"] and Path(args["adapter"]), args["adapter_name"],
                   b["prompt_tokens"], b["new_tokens"], b["threads"])


ENGINES = {  # name -> what a child process runs, from its JSON arguments
    "ort": lambda a: run_ort(a["onnx_dir"], a["adapter"], a["adapter_name"], a["b"]),
    "context": lambda a: run_context(a["onnx_dir"], a["adapter"], a["adapter_name"], a["b"]),
    "profile": _profile_engine,
    "paired": lambda a: run_paired(a["onnx_dir"], a["adapters"], a["b"], a.get("gguf")),
    "switch": lambda a: run_switch(a["onnx_dir"], a["adapters"], a["b"]),
    "llama_cpp": lambda a: run_llama_cpp(a["gguf"], a["b"]),
    "torch": lambda a: run_torch(a["model_dir"], a["b"]),
}


def main(argv: list[str]) -> None:
    engine, args = argv[0], json.loads(argv[1])
    if engine not in ENGINES:
        raise SystemExit(f"unknown engine {engine}")
    out = ENGINES[engine](args)
    out["peak_rss_mb"] = _proc_status_mb("VmHWM")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
