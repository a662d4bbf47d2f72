"""Stage `benchmark`: CPU tok/s of the shipped model with/without adapter, and PyTorch fp32 beside it."""
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_csv, write_json
from ondevice.benchmark import benchmark
from ondevice.cli import params_option, stage


@click.command()
@params_option
@click.option("--onnx", "onnx_dir", default="models/onnx", show_default=True)
@click.option("--base", default="models/base", show_default=True)
@click.option("--metrics", default="metrics/benchmark.json", show_default=True)
@click.option("--plot", default="plots/benchmark.csv", show_default=True)
@stage
def main(params_path, onnx_dir, base, metrics, plot):
    params = P.load(params_path)
    name = params["optimize"]["adapter_name"]
    adapter = Path(onnx_dir) / "adapters" / f"{name}.onnx_adapter"
    result, rows = benchmark(Path(onnx_dir), adapter, name, Path(base), params["benchmark"])
    write_csv(plot, rows)
    write_json(metrics, result)
    for r in rows:
        click.echo(f"{r['engine']:>18}: decode {r['decode_tok_s']:.1f} tok/s, prefill {r['prefill_tok_s']:.0f} tok/s, "
                   f"TTFT {r['ttft_ms']:.0f} ms, peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
