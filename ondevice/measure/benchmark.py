"""CPU token throughput of the shipped model, read top to bottom.

1. each engine alone, in its own process: the int4 model (base, then with each adapter), PyTorch
   fp32, llama.cpp on GGUFs of the same float base when asked (ondevice.measure.gguf_peer): decode and
   prefill tok/s, TTFT, peak RSS;
2. the adapter cost: base and adapters interleaved in one process (each llama.cpp GGUF takes turns too);
3. adapter switching: every adapter loaded, a different one per request;
4. the roofline: weight bytes a decode step reads against the measured copy bandwidth;
5. onnxruntime's per-node profile of a decode (benchmark.profile);
6. sweeps: decode speed by context length, and the tuned rows by intra-op threads.
`threads: 0` measures the shipped genai_config.json exactly as the seed's client opens it.
Ratios between engines are meaningful (same run, same prompt); absolute numbers are this machine's.
"""
from __future__ import annotations

import os
from pathlib import Path

from ondevice.child import in_child
from ondevice.measure import engines as E
from ondevice.measure.profile import profile


def benchmark(onnx_dir: Path, adapters: dict[str, Path], float_dir: Path, b: dict,
              ggufs: dict[str, Path] | None = None) -> tuple[dict, dict]:
    """ggufs: llama.cpp type (Q4_0, ...) -> GGUF of the float base; the first is the headline peer.
    Returns (metrics, plot rows by plot name)."""
    ggufs = {t: str(p) for t, p in (ggufs or {}).items()}
    onnx, paths = str(onnx_dir), {n: str(p) for n, p in adapters.items()}
    first = next(iter(adapters))  # the sweeps and the profile run the base and the first adapter
    base_and_first = (("base", None), (first, paths[first]))

    # 1. each engine alone
    results = {"ort_int4": in_child(E.onnx_decode, onnx_dir=onnx, adapter=None, adapter_name="", b=b)}
    for name, path in paths.items():
        results[f"ort_int4_{name}"] = in_child(E.onnx_decode, onnx_dir=onnx, adapter=path, adapter_name=name, b=b)
    if b["torch_baseline"]:
        # a reference, not a contender: its eager generate is slow and steady, so fewer runs (torch_runs)
        results["torch_fp32"] = in_child(E.torch_decode, model_dir=str(float_dir), b={**b, "runs": b["torch_runs"]})
    for kind, gguf in ggufs.items():
        results[f"llama_cpp_{kind.lower()}"] = in_child(E.llama_cpp_decode, gguf=gguf, b=b)
    metrics = dict(results)
    # 0: no session options of ours, the shipped genai_config.json as the seed's client opens it
    metrics["threads"] = b["threads"]
    metrics["session_options"] = f"intra_op_num_threads={b['threads']}" if b["threads"] else "as shipped"
    metrics["model_mb"] = round(sum(p.stat().st_size for p in Path(onnx_dir).glob("model.onnx*")) / 1e6, 2)
    metrics["adapter_mb"] = {n: round(Path(p).stat().st_size / 1e6, 3) for n, p in adapters.items()}

    # 2. the adapter cost from one process, runs interleaved: separate processes drift by more
    # than the cost itself on a shared box
    paired = in_child(E.paired_decode, onnx_dir=onnx, adapters=paths, b=b, ggufs=ggufs)
    metrics["paired"] = paired
    metrics["adapter_decode_cost_pct"] = {n: paired[f"{n}_cost_pct"] for n in adapters}
    metrics["adapter_decode_cost_pct_max"] = max(metrics["adapter_decode_cost_pct"].values())
    slowest_adapter = min(paired[f"{n}_decode_tok_s"] for n in adapters)

    # 3. switching
    metrics["switching"] = in_child(E.adapter_switching, onnx_dir=onnx, adapters=paths, b=b)

    # 4. decode is memory-bound: tok/s can at best be bandwidth / bytes read per token
    metrics["weight_mb_per_token"] = round(E.weight_bytes_per_token(onnx_dir) / 1e6, 2)
    metrics["memory_bandwidth_gb_s"] = E.memory_bandwidth_gb_s()
    roofline = metrics["memory_bandwidth_gb_s"] * 1e3 / metrics["weight_mb_per_token"]
    metrics["roofline_tok_s"] = round(roofline, 1)
    metrics["roofline_fraction"] = round(paired["base_decode_tok_s"] / roofline, 3)
    metrics["roofline_fraction_adapter"] = round(slowest_adapter / roofline, 3)
    if "torch_fp32" in results:
        slowest = min(results[f"ort_int4_{n}"]["decode_tok_s"] for n in adapters)
        metrics["speedup_vs_torch_fp32"] = round(slowest / results["torch_fp32"]["decode_tok_s"], 2)
    # the ratios from the interleaved rounds (same process, same minutes), not separate processes
    vs = {kind: {"base": round(paired["base_decode_tok_s"] / paired[f"llama_cpp_{kind.lower()}_decode_tok_s"], 3),
                 "adapter": round(slowest_adapter / paired[f"llama_cpp_{kind.lower()}_decode_tok_s"], 3)}
          for kind in ggufs}
    if vs:
        metrics["vs_llama_cpp"], headline_peer = vs, vs[next(iter(ggufs))]
        metrics["llama_cpp_peer"] = next(iter(ggufs))
        metrics["base_vs_llama_cpp"], metrics["adapter_vs_llama_cpp"] = headline_peer["base"], headline_peer["adapter"]

    # 5. where a decode step's time goes
    if b["profile"]:
        metrics["profile"] = {label: in_child(profile, onnx_dir=onnx, adapter=path, name=first,
                                              prompt_tokens=b["prompt_tokens"], new_tokens=b["new_tokens"],
                                              threads=b["threads"])
                              for label, path in base_and_first}

    # 6. sweeps, base and first adapter at each point
    plots = {"engines": [{"engine": name, "decode_tok_s": r["decode_tok_s"], "prefill_tok_s": r["prefill_tok_s"],
                          "ttft_ms": r["ttft_ms"], "peak_rss_mb": r["peak_rss_mb"]} for name, r in results.items()],
             "context": [], "threads": []}
    for context in b["context_lengths"]:
        for label, path in base_and_first:
            r = in_child(E.context_decode, onnx_dir=onnx, adapter=path, adapter_name=first, b=b, context=context)
            plots["context"].append({"context": context, "model": label, "decode_tok_s": r["decode_tok_s"],
                                     "peak_rss_mb": r["peak_rss_mb"]})
    for threads in b["thread_counts"]:
        for label, path in base_and_first:
            r = in_child(E.threads_decode, onnx_dir=onnx, adapter=path, adapter_name=first, b=b, threads=threads)
            plots["threads"].append({"threads": threads, "model": label, "decode_tok_s": r["decode_tok_s"],
                                     "prefill_tok_s": r["prefill_tok_s"]})
    return metrics, plots


def headline(m: dict) -> dict:
    """The figures a person compares between runs (DVCLive's summary), from a CPU or a CUDA benchmark:
    decode tok/s of the base and of the slowest adapter (paired rounds where measured), the adapter
    cost, sizes, and the ratios to the peers that ran."""
    adapters = list(m["adapter_decode_cost_pct"])
    if "paired" in m:
        base = m["paired"]["base_decode_tok_s"]
        slowest = min(m["paired"][f"{n}_decode_tok_s"] for n in adapters)
    else:
        base = m["ort_int4"]["decode_tok_s"]
        slowest = min(m[f"ort_int4_{n}"]["decode_tok_s"] for n in adapters)
    out = {"decode_tok_s": base, "adapter_decode_tok_s": slowest, "adapter_cost_pct": m["adapter_decode_cost_pct_max"],
           "model_mb": m["model_mb"], "adapter_mb": max(m["adapter_mb"].values())}
    for key in ("roofline_fraction", "speedup_vs_torch_fp32", "adapter_vs_llama_cpp", "speedup_vs_torch_bf16",
                "base_vs_builder", "gpu_memory_model_and_adapters_mb"):
        if key in m:
            out[key] = m[key]
    return out


def run(onnx_dir: Path, adapters_dir: Path, float_dir: Path, names: list[str], source: str, plots_dir: Path,
        cfg) -> dict:
    """The benchmark stage: a CPU build measured on the CPU (benchmark above), a CUDA build on the GPU
    (benchmark_cuda). cfg: the params.Benchmark section; names: the adapters to measure; source:
    model.source (how llama.cpp's converter reads the float base). The llama.cpp peer's tools and every
    adapter file are checked first, so a missing one fails in one line before any conversion or timing.
    Writes one CSV per plot into plots_dir; returns the metrics."""
    import tempfile

    from ondevice.atomic import write_csv
    from ondevice.export.onnx_lora import read_adapter
    from ondevice.measure import gguf_peer
    from ondevice.measure.benchmark_cuda import benchmark as benchmark_cuda
    from ondevice.runtime.cuda_check import model_providers, require_cuda_provider

    if cfg.llama_cpp:  # the peer's tools first: missing ones fail before anything else
        gguf_peer.check()
    adapters = {n: adapters_dir / f"{n}.onnx_adapter" for n in names}
    for path in adapters.values():
        read_adapter(path)
    cuda = "cuda" in model_providers(onnx_dir)
    b = cfg.model_dump()  # plain JSON: every engine runs in a child process (ondevice.child)
    if cuda:
        require_cuda_provider(f"{onnx_dir} was built for optimize.provider=cuda")
        metrics, plots = benchmark_cuda(onnx_dir, adapters, float_dir, b)
    elif cfg.llama_cpp:  # CPU builds; the GGUFs live only while measured (3.8 B: 7.6 GB of f16 on the way)
        with tempfile.TemporaryDirectory(prefix="ondevice-gguf-") as tmp:
            ggufs, seconds = gguf_peer.make_ggufs(float_dir, Path(tmp), cfg.llama_cpp_types, source,
                                                  cfg.threads or os.cpu_count())
            metrics, plots = benchmark(onnx_dir, adapters, float_dir, b, ggufs)
            metrics["llama_cpp_gguf_mb"] = {t: round(p.stat().st_size / 1e6, 1) for t, p in ggufs.items()}
        metrics["llama_cpp_build_s"] = seconds
    else:
        metrics, plots = benchmark(onnx_dir, adapters, float_dir, b)
    for name, rows in plots.items():
        write_csv(plots_dir / f"{name}.csv", rows)
    return metrics


def summary_lines(result: dict) -> list[str]:
    """What the stage prints: each engine's speed, then switching (CPU) or the adapter cost (GPU)."""
    out = []
    engines = {n: r for n, r in result.items()  # every engine's own run: ort_int4, ort_int4_NAME, torch_*, ...
               if isinstance(r, dict) and {"decode_tok_s", "prefill_tok_s", "ttft_ms"} <= r.keys()}
    for name, r in engines.items():
        rss = f", peak RSS {r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
        out.append(f"{name:>18}: decode {r['decode_tok_s']:.1f} tok/s, prefill {r['prefill_tok_s']:.0f} "
                   f"tok/s, TTFT {r['ttft_ms']:.1f} ms{rss}")
    if "switching" in result:
        s = result["switching"]
        out.append(f"switching: set_active_adapter {s['set_active_adapter_us_median']} us, "
                   f"RSS {s['rss_before_adapters_mb']} -> {s['rss_all_adapters_mb']} MB "
                   f"with {s['adapters_loaded']} adapters")
    else:
        out.append(f"adapter cost {result['adapter_decode_cost_pct']} % on {result['device']}, "
                   f"GPU memory {result['gpu_memory_model_and_adapters_mb']:.0f} MB")
    return out
