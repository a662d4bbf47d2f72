"""Stage `benchmark`: CPU tok/s of the shipped model alone and with each adapter, adapter switching,
context-length and thread sweeps; PyTorch fp32 (and llama.cpp, if asked) in the same run. A CUDA
build is measured on the GPU instead (ondevice/measure/benchmark_cuda.py)."""
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_json
from ondevice.cli import params_option, stage
from ondevice.live import log_summary
from ondevice.measure.benchmark import headline, run, summary_lines


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
    result = run(Path(onnx_dir), Path(adapters_dir), Path(base), list(params["adapters"]), params["model"]["source"],
                 Path(plots_dir), P.section(params, "benchmark"))
    write_json(metrics, result)
    log_summary(live_dir, headline(result))
    for line in summary_lines(result):
        click.echo(line)


if __name__ == "__main__":
    main()
