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
    metrics = {p.stem: json.loads(p.read_text()) for p in sorted(Path(metrics_dir).glob("*.json"))}
    m = manifest(Path(onnx_dir), params, metrics)
    write_json(out, m)
    click.echo(f"{m['name']} v{m['version']}: {len(m['files'])} files -> {out}")


if __name__ == "__main__":
    main()
