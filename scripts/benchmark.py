"""Stage `benchmark`: CPU tok/s of the shipped model alone and with each adapter, adapter switching,
context-length and thread sweeps; PyTorch fp32 (and llama.cpp, if asked) in the same run."""
import importlib.util
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import UserError, write_csv, write_json
from ondevice.benchmark import benchmark, headline
from ondevice.benchmark_cuda import benchmark as benchmark_cuda
from ondevice.cli import params_option, stage
from ondevice.cuda_check import model_providers, require_cuda_provider
from ondevice.live import log_summary
from ondevice.model_source import EMBEDDED, embedded_gguf
from ondevice.onnx_lora import read_adapter


def llama_cpp_gguf(params: dict) -> Path | None:
    if not params["benchmark"]["llama_cpp"]:
        return None
    if importlib.util.find_spec("llama_cpp") is None:
        raise UserError("benchmark.llama_cpp=true needs llama-cpp-python: run `make bench-llama` (it builds it)")
    source = params["model"]["source"]
    if source not in EMBEDDED:
        raise UserError(f"benchmark.llama_cpp=true needs the base model as GGUF; only embedded models ship one, "
                        f"not model.source={source}")
    return embedded_gguf(source)


@click.command()
@params_option
@click.option("--onnx", "onnx_dir", required=True)
@click.option("--adapters", "adapters_dir", required=True)
@click.option("--base", required=True)
@click.option("--metrics", required=True)
@click.option("--plots", "plots_dir", required=True)
@click.option("--live", "live_dir", required=True)
@stage
def main(params_path, onnx_dir, adapters_dir, base, metrics, plots_dir, live_dir):
    params = P.load(params_path)
    gguf = llama_cpp_gguf(params)
    adapters = {n: Path(adapters_dir) / f"{n}.onnx_adapter" for n in params["adapters"]}
    for path in adapters.values():  # a missing or cut-off file fails here in one line, before any timing
        read_adapter(path)
    if "cuda" in model_providers(Path(onnx_dir)):  # a CUDA build is measured on the GPU, or not at all
        require_cuda_provider(f"{onnx_dir} was built for optimize.provider=cuda")
        result, plots = benchmark_cuda(Path(onnx_dir), adapters, Path(base), params["benchmark"])
    else:
        result, plots = benchmark(Path(onnx_dir), adapters, Path(base), params["benchmark"], gguf)
    for name, rows in plots.items():
        write_csv(Path(plots_dir) / f"{name}.csv", rows)
    write_json(metrics, result)
    log_summary(live_dir, headline(result))
    for r in plots["engines"]:
        rss = f", peak RSS {r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
        click.echo(f"{r['engine']:>18}: decode {r['decode_tok_s']:.1f} tok/s, prefill {r['prefill_tok_s']:.0f} tok/s, "
                   f"TTFT {r['ttft_ms']:.1f} ms{rss}")
    if "switching" in result:
        s = result["switching"]
        click.echo(f"switching: set_active_adapter {s['set_active_adapter_us_median']} us, "
                   f"RSS {s['rss_before_adapters_mb']} -> {s['rss_all_adapters_mb']} MB "
                   f"with {s['adapters_loaded']} adapters")
    else:
        click.echo(f"adapter cost {result['adapter_decode_cost_pct']} % on {result['device']}, "
                   f"GPU memory {result['gpu_memory_model_and_adapters_mb']:.0f} MB")


if __name__ == "__main__":
    main()
