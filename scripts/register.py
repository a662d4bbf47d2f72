"""Stage `register`: the model card and a manifest of the shipped model (file hashes, params, metrics,
package versions)."""
import json
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_json, write_text
from ondevice.cli import params_option, stage
from ondevice.ship.model_card import render
from ondevice.ship.register import manifest


def read_metrics(metrics_dir: Path, names: list[str], which=("data", "quantize", "optimize", "adapter", "evaluate"),
                 optional=()) -> dict:
    out = {}
    for name in (*which, *optional):
        path = metrics_dir / name
        if path.is_dir():  # one file per adapter
            out[name] = {n: json.loads((path / f"{n}.json").read_text()) for n in names}
        elif name in optional and not path.with_suffix(".json").exists():
            out[name] = None
        else:
            out[name] = json.loads(path.with_suffix(".json").read_text())
    return out


@click.command()
@params_option
@click.option("--onnx", "onnx_dir", required=True)
@click.option("--adapters", "adapters_dir", required=True)
@click.option("--metrics-dir", required=True)
@click.option("--out", required=True)
@click.option("--card", required=True,
              help="the model card written here, shipped as README.md")
@stage
def main(params_path, onnx_dir, adapters_dir, metrics_dir, out, card):
    params = P.load(params_path)
    names = list(params["adapters"])
    # The manifest holds model facts only: benchmark and training times describe a machine, not the
    # model. The card also gives the speed, and names the machine: re-benchmarking rewrites the card
    # (and so its hash in the manifest), nothing else.
    metrics = read_metrics(Path(metrics_dir), names)
    extra = read_metrics(Path(metrics_dir), names, which=(), optional=("benchmark", "model"))
    write_text(card, render(params, {**metrics, **extra}))
    m = manifest(Path(onnx_dir), Path(adapters_dir), params, metrics, card=Path(card))
    write_json(out, m)
    click.echo(f"{m['name']} v{m['version']}: {len(m['files'])} files (model card {card} as README.md), "
               f"adapters {', '.join(m['adapters'])} -> {out}")


if __name__ == "__main__":
    main()
