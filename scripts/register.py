"""Stage `register`: a manifest of the shipped model (file hashes, params, metrics, package versions)."""
import json
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_json
from ondevice.cli import params_option, stage
from ondevice.register import manifest


def read_metrics(metrics_dir: Path, names: list[str]) -> dict:
    out = {}
    for name in ("data", "quantize", "optimize", "adapter", "evaluate"):
        path = metrics_dir / name
        if path.is_dir():  # one file per adapter
            out[name] = {n: json.loads((path / f"{n}.json").read_text()) for n in names}
        else:
            out[name] = json.loads(path.with_suffix(".json").read_text())
    return out


@click.command()
@params_option
@click.option("--onnx", "onnx_dir", default="models/onnx", show_default=True)
@click.option("--adapters", "adapters_dir", default="models/adapters", show_default=True)
@click.option("--metrics-dir", default="metrics", show_default=True)
@click.option("--out", default="reports/manifest.json", show_default=True)
@stage
def main(params_path, onnx_dir, adapters_dir, metrics_dir, out):
    params = P.load(params_path)
    # Model facts only: benchmark and training times describe a machine, not the model, and stay
    # out so that re-benchmarking or a bit-identical retrain does not re-register.
    metrics = read_metrics(Path(metrics_dir), list(params["adapters"]))
    m = manifest(Path(onnx_dir), Path(adapters_dir), params, metrics)
    write_json(out, m)
    click.echo(f"{m['name']} v{m['version']}: {len(m['files'])} files, adapters {', '.join(m['adapters'])} -> {out}")


if __name__ == "__main__":
    main()
