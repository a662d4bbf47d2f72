"""The benchmark's engines: plain functions, each timing one way of answering the same prompt.

Every engine decodes the fixed prompt greedily to exactly `new_tokens` tokens, runs `warmup` +
`runs` times and reports medians (`b` is params.yaml's `benchmark:` section). The benchmark runs
each in its own process (`child.in_child`), so each one's peak RSS is its own.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from ondevice.child import rss_mb
from ondevice.runtime.client import decode, generate, kv_capacity_floor, new_generator, open_model, timed

PROMPT = ("I am planning a two week trip through Portugal and Spain by train in late spring. "
          "I like old towns, seafood, long walks and small museums, and I want to keep the budget "
          "reasonable. Which cities should I include, how should I split the days, what should I "
          "book in advance, and what should I pack for the weather? ") * 40


def prompt_ids(tokenizer_encode, n: int) -> list[int]:
    ids = list(tokenizer_encode(PROMPT))
    if len(ids) < n:
        raise ValueError(f"benchmark prompt has {len(ids)} tokens, fewer than prompt_tokens={n}")
    return ids[:n]


def interleaved(engines: dict, runs: int, warmup: int = 0) -> dict[str, list]:
    """The one measuring loop of every comparison: each engine (name -> a call that runs it once)
    takes its turn in every round, so the box's drift hits all of them alike; the results of the
    rounds after `warmup`, per engine, in order."""
    out = {name: [] for name in engines}
    for round_ in range(warmup + runs):
        for name, run_once in engines.items():
            result = run_once()
            if round_ >= warmup:
                out[name].append(result)
    return out


def median_run(run_once, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        run_once()
    results = [run_once() for _ in range(runs)]
    return {k: round(statistics.median(r[k] for r in results), 4) for k in results[0]}


def timed_answer(model, adapters, adapter_name: str | None, ids: list[int], new_tokens: int, floor: int = 0) -> dict:
    """One greedy answer of exactly `new_tokens` through runtime.generate, clocked."""
    return timed(generate(model, adapters, adapter_name, ids, new_tokens, floor, exact=True), len(ids))


def onnx_decode(onnx_dir: str, adapter: str | None, adapter_name: str, b: dict) -> dict:
    """The shipped model through onnxruntime-genai (threads 0: its genai_config.json as shipped)."""
    model, tok, adapters = open_model(onnx_dir, {adapter_name: adapter} if adapter else None, b["threads"])
    ids, floor = prompt_ids(tok.encode, b["prompt_tokens"]), kv_capacity_floor(onnx_dir)
    return median_run(lambda: timed_answer(model, adapters, adapter_name, ids, b["new_tokens"], floor),
                      b["runs"], b["warmup"])


def context_decode(onnx_dir: str, adapter: str | None, adapter_name: str, b: dict, context: int) -> dict:
    """Decode speed after a prompt of `context` tokens (the KV cache it attends over grows with it)."""
    return onnx_decode(onnx_dir, adapter, adapter_name, {**b, "prompt_tokens": context,
                                                         "new_tokens": b["sweep_new_tokens"], "runs": 1, "warmup": 1})


def threads_decode(onnx_dir: str, adapter: str | None, adapter_name: str, b: dict, threads: int) -> dict:
    """A tuned row: the same model with intra_op_num_threads set by the client."""
    return onnx_decode(onnx_dir, adapter, adapter_name, {**b, "threads": threads})


def paired_decode(onnx_dir: str, adapters: dict[str, str], b: dict, ggufs: dict[str, str] | None = None) -> dict:
    """Base and every adapter in one process, runs interleaved (base, a, b, base, a, b, ...): the
    adapter cost as a paired comparison, free of the drift between separate processes. With GGUFs
    (type -> path), llama.cpp takes its turn on each in the same rounds (one engine runs at a time)."""
    model, tok, loaded = open_model(onnx_dir, adapters, b["threads"])
    ids, floor = prompt_ids(tok.encode, b["prompt_tokens"]), kv_capacity_floor(onnx_dir)
    engines = {}
    for kind, gguf in (ggufs or {}).items():
        llama = _open_llama_cpp(gguf, b)
        engines[f"llama_cpp_{kind.lower()}"] = \
            lambda llama=llama: _llama_cpp_answer(*llama, b["new_tokens"])["decode_tok_s"]
    for label in [None, *adapters]:
        engines[label] = lambda label=label: timed_answer(model, loaded, label, ids, b["new_tokens"],
                                                          floor)["decode_tok_s"]
    speeds = interleaved(engines, b["runs"], b["warmup"])
    base = statistics.median(speeds[None])
    out = {"base_decode_tok_s": round(base, 2)}
    for name in adapters:
        tok_s = statistics.median(speeds[name])
        out[f"{name}_decode_tok_s"] = round(tok_s, 2)
        out[f"{name}_cost_pct"] = round(100 * (1 - tok_s / base), 2)
    for kind in ggufs or {}:
        out[f"llama_cpp_{kind.lower()}_decode_tok_s"] = round(statistics.median(speeds[f"llama_cpp_{kind.lower()}"]), 2)
    return out


def adapter_switching(onnx_dir: str, adapters: dict[str, str], b: dict) -> dict:
    """All adapters loaded at once; every request picks another one, as a multi-task app would."""
    import onnxruntime_genai as og

    model, tok, _ = open_model(onnx_dir, None, b["threads"])
    rss_base = rss_mb()
    loaded, load_ms = og.Adapters(model), {}
    for name, path in adapters.items():
        t0 = time.perf_counter()
        loaded.load(path, name)
        load_ms[name] = round((time.perf_counter() - t0) * 1000, 3)
    rss_loaded = rss_mb()
    ids, names, floor = prompt_ids(tok.encode, min(b["prompt_tokens"], 16)), list(adapters), kv_capacity_floor(onnx_dir)
    set_us, speeds = [], []
    for i in range(b["switches"] + 1):
        name = names[i % len(names)]
        generator = new_generator(model, None, None, len(ids) + 8, floor, exact=True)  # a request
        t0 = time.perf_counter()
        generator.set_active_adapter(loaded, name)  # what it costs to point the request at its adapter
        set_s = time.perf_counter() - t0
        answer = timed(decode(generator, ids, 8), len(ids))  # then its short answer, on the same generator
        if i:  # the first request warms up
            set_us.append(set_s * 1e6)
            speeds.append(answer["decode_tok_s"])
    return {"adapters_loaded": len(names), "adapter_load_ms": load_ms,
            "rss_before_adapters_mb": rss_base, "rss_all_adapters_mb": rss_loaded,
            "set_active_adapter_us_median": round(statistics.median(set_us), 2),
            "set_active_adapter_us_max": round(max(set_us), 2),
            "switching_decode_tok_s": round(statistics.median(speeds), 2)}


def _open_llama_cpp(gguf: str, b: dict):
    """llama.cpp on the GGUF with the benchmark's threads (0: every CPU), and the prompt in its tokens."""
    from llama_cpp import Llama

    threads = b["threads"] or os.cpu_count()
    llm = Llama(model_path=gguf, n_ctx=b["prompt_tokens"] + b["new_tokens"] + 8, n_threads=threads,
                n_threads_batch=threads, n_batch=512, verbose=False)
    return llm, prompt_ids(lambda s: llm.tokenize(s.encode(), add_bos=False, special=False), b["prompt_tokens"])


def _llama_cpp_answer(llm, ids: list[int], n_new: int) -> dict:
    """One greedy answer of exactly `n_new` tokens, clocked like timed_answer."""
    llm.reset()

    def tokens():
        for n, token in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True), 1):
            yield token
            if n == n_new:
                return

    return timed(tokens(), len(ids))


def llama_cpp_decode(gguf: str, b: dict) -> dict:
    """The peer engine: llama.cpp (llama-cpp-python) on the base model's Q4 GGUF, same prompt, greedy."""
    llm, ids = _open_llama_cpp(gguf, b)
    return median_run(lambda: _llama_cpp_answer(llm, ids, b["new_tokens"]), b["runs"], b["warmup"])


def torch_decode(model_dir: str, b: dict, device: str = "cpu") -> dict:
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
    def once():  # TTFT from a one-token generate; decode = the rest of a full one
        t0 = clock()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        t_first = clock()
        model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
        t_end = clock()
        ttft = t_first - t0
        return {"prefill_tok_s": ids.shape[1] / ttft, "ttft_ms": ttft * 1000,
                "decode_tok_s": (n_new - 1) / max(t_end - t_first - ttft, 1e-9), "generated": n_new}

    return median_run(once, b["runs"], b["warmup"])


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
    """The best rate of a few large array copies (bytes read + written per second), the ceiling a
    decode step streams against: by one thread (numpy) and by every thread torch has, whichever is
    faster on this machine. One copy thread reached 17 GB/s on a 16-core Xeon where all reached 76
    (reports/lab_phi35_cpu_h200host/); on a 2-core box one thread can be the faster."""
    import numpy as np
    import torch

    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for copy in (lambda: np.copyto(dst.numpy(), src.numpy()), lambda: dst.copy_(src)):
        for _ in range(repeats):
            t0 = time.perf_counter()
            copy()
            best = min(best, time.perf_counter() - t0)
    return round(2 * src.numel() * 4 / best / 1e9, 2)
