"""GPU throughput of a model built for `optimize.provider: cuda`, read top to bottom.

1. load the shipped folder with every adapter through onnxruntime-genai-cuda (the seed's client), in
   a child process that imports the CUDA serving runtime (runtime.cuda_serving_path: 0.15.2, whose
   adapters stay on the GPU) where it is installed;
2. base and each adapter in interleaved rounds, so the adapter cost is a paired comparison;
3. optionally the builder's own default int4 build of the same float base, in the same rounds;
4. the peer: PyTorch bf16 `generate` on the same card, after the ONNX models are freed;
5. GPU memory: what the card holds with the model and adapters loaded, from nvidia-smi.
Same fixed prompt as the CPU benchmark, greedy, exactly `new_tokens` new tokens, medians.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ondevice.child import in_child
from ondevice.measure.engines import interleaved, prompt_ids, timed_answer, torch_decode
from ondevice.onnx_folder import cuda_graph_enabled
from ondevice.runtime.client import cuda_serving_path, kv_capacity_floor, open_model


def gpu_memory_used_mb() -> float:
    """Memory in use on GPU 0, as the driver sees it (onnxruntime's allocations are not torch's)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[0])


def gpu_name() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[0]


def builder_default_build(float_dir: Path, out_dir: Path, cuda_graph: bool) -> float:
    """What `python -m onnxruntime_genai.models.builder -p int4 -e cuda` makes of the float base: the bar
    our AWQ build with LoRA inputs is held to, with CUDA graphs if ours has them. Returns seconds."""
    from ondevice.export.builder import run_builder, use_cuda_graph

    with tempfile.TemporaryDirectory() as cache:
        seconds = run_builder(float_dir, out_dir, "int4", "cuda", Path(cache), [])
    if cuda_graph:
        use_cuda_graph(out_dir)
    return seconds


def measure(onnx_dir: str, adapters: dict[str, str], builder_dir: str | None, b: dict) -> dict:
    """Steps 1, 2, 3 and 5 in whichever onnxruntime-genai this process imports: benchmark() runs it
    in a child whose path starts with the CUDA serving runtime."""
    import onnxruntime_genai as og

    memory_before = gpu_memory_used_mb()
    model, tok, loaded = open_model(Path(onnx_dir), {n: Path(p) for n, p in adapters.items()})
    memory_loaded = gpu_memory_used_mb()
    ids, floor = prompt_ids(tok.encode, b["prompt_tokens"]), kv_capacity_floor(Path(onnx_dir))
    engines = {"ort_int4": (model, None, None)}
    engines.update({f"ort_int4_{n}": (model, loaded, n) for n in adapters})
    if builder_dir:
        engines["builder_int4"] = (open_model(Path(builder_dir))[0], None, None)

    runs = interleaved({name: lambda m=m, a=a, n=n: timed_answer(m, a, n, ids, b["new_tokens"], floor)
                        for name, (m, a, n) in engines.items()}, b["runs"], b["warmup"])
    results = {name: {k: round(statistics.median(r[k] for r in rs), 3) for k in ("prefill_tok_s", "ttft_ms",
                                                                                 "decode_tok_s")}
               for name, rs in runs.items()}
    # Decode speed as the KV cache grows: base and the first adapter after prompts of each length.
    first = next(iter(adapters))
    context_rows = []
    for context in b["context_lengths"]:
        long_ids = prompt_ids(tok.encode, context)
        for label, a, name in (("base", None, None), (first, loaded, first)):
            r = timed_answer(model, a, name, long_ids, b["sweep_new_tokens"], floor)
            context_rows.append({"context": context, "model": label, "decode_tok_s": round(r["decode_tok_s"], 2),
                                 "ttft_ms": round(r["ttft_ms"], 2)})
    return {"runtime": f"onnxruntime-genai-cuda {og.__version__}", "prompt_tokens": len(ids), "results": results,
            "context_rows": context_rows, "gpu_memory_model_and_adapters_mb": round(memory_loaded - memory_before, 1),
            "gpu_memory_peak_mb": round(gpu_memory_used_mb() - memory_before, 1)}


def benchmark(onnx_dir: Path, adapters: dict[str, Path], float_dir: Path, b: dict) -> tuple[dict, dict]:
    """Returns (metrics, plot rows by plot name), like the CPU benchmark."""
    serving = cuda_serving_path()  # a folder named but empty stops here, before the reference build
    if serving is None:
        where = os.environ.get("ONDEVICE_CUDA_SERVE") or f"{sys.prefix}/og-cuda-serve"
        print(f"warning: no CUDA serving runtime in {where} (make setup-cuda-serve): measuring with this "
              "onnxruntime-genai, which copies every adapter tensor to the GPU on every step", file=sys.stderr)
    # the builder's reference (2.4 GB at 3.8 B) lives only as long as the measuring: removed on failure too
    with tempfile.TemporaryDirectory() as scratch:
        builder_dir, build_s = None, None
        if b["builder_reference"]:  # built here, by the 0.18 builder, before the serving child starts
            builder_dir = Path(scratch)
            build_s = builder_default_build(float_dir, builder_dir, cuda_graph_enabled(onnx_dir))
        m = in_child(measure, path_first=serving, onnx_dir=str(onnx_dir),
                     adapters={n: str(p) for n, p in adapters.items()},
                     builder_dir=str(builder_dir) if builder_dir else None, b=b)
    results = m["results"]
    base = results["ort_int4"]["decode_tok_s"]
    cost = {n: round(100 * (1 - results[f"ort_int4_{n}"]["decode_tok_s"] / base), 2) for n in adapters}
    metrics = {"device": gpu_name(), "runtime": m["runtime"], "cuda_graph": cuda_graph_enabled(onnx_dir),
               "prompt_tokens": m["prompt_tokens"], "new_tokens": b["new_tokens"], **results,
               "adapter_decode_cost_pct": cost, "adapter_decode_cost_pct_max": max(cost.values()),
               "gpu_memory_model_and_adapters_mb": m["gpu_memory_model_and_adapters_mb"],
               "gpu_memory_peak_mb": m["gpu_memory_peak_mb"],
               "model_mb": round(sum(p.stat().st_size for p in Path(onnx_dir).glob("model.onnx*")) / 1e6, 2),
               "adapter_mb": {n: round(Path(p).stat().st_size / 1e6, 3) for n, p in adapters.items()}}
    if "builder_int4" in results:
        metrics["builder_build_s"] = round(build_s, 1)
        metrics["base_vs_builder"] = round(base / results["builder_int4"]["decode_tok_s"], 3)
    if b["torch_baseline"]:
        metrics["torch_bf16"] = torch_decode(str(float_dir), {**b, "runs": b["torch_runs"]}, "cuda")
        slowest = min(results[f"ort_int4_{n}"]["decode_tok_s"] for n in adapters)
        metrics["speedup_vs_torch_bf16"] = round(slowest / metrics["torch_bf16"]["decode_tok_s"], 2)
    engine_rows = {**results, **({"torch_bf16": metrics["torch_bf16"]} if "torch_bf16" in metrics else {})}
    plots = {"engines": [{"engine": n, "decode_tok_s": r["decode_tok_s"], "prefill_tok_s": r["prefill_tok_s"],
                          "ttft_ms": r["ttft_ms"]} for n, r in engine_rows.items()],
             "context": m["context_rows"],
             # CPU threads do not apply on the GPU: one row, threads 0 = the provider's own scheduling
             "threads": [{"threads": 0, "model": "base", "decode_tok_s": base,
                          "prefill_tok_s": results["ort_int4"]["prefill_tok_s"]}]}
    return metrics, plots
