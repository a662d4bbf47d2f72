"""Stage `register`: the model card and a manifest of the shipped model (file hashes, params, metrics,
package versions)."""
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_json
from ondevice.cli import params_option, stage
from ondevice.ship.register import run


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
    m = run(Path(onnx_dir), Path(adapters_dir), Path(metrics_dir), params, Path(card), P.section(params, "register"))
    write_json(out, m)
    click.echo(f"{m['name']} v{m['version']}: {len(m['files'])} files (model card {card} as README.md), "
               f"adapters {', '.join(m['adapters'])} -> {out}")


if __name__ == "__main__":
    main()
