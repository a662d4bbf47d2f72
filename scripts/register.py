"""Stage `register`: a manifest of the shipped model (file hashes, params, metrics, package versions)."""
import json
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_json
from ondevice.cli import params_option, stage
from ondevice.register import manifest


@click.command()
@params_option
@click.option("--onnx", "onnx_dir", default="models/onnx", show_default=True)
@click.option("--metrics-dir", default="metrics", show_default=True)
@click.option("--out", default="reports/manifest.json", show_default=True)
@stage
def main(params_path, onnx_dir, metrics_dir, out):
    params = P.load(params_path)
    # Model facts only: benchmark and training times describe a machine, not the model, and stay
    # out so that re-benchmarking or a bit-identical retrain does not re-register.
    metrics = {name: json.loads((Path(metrics_dir) / f"{name}.json").read_text())
               for name in ("data", "quantize", "optimize", "evaluate")}
    m = manifest(Path(onnx_dir), params, metrics)
    write_json(out, m)
    click.echo(f"{m['name']} v{m['version']}: {len(m['files'])} files -> {out}")


if __name__ == "__main__":
    main()
