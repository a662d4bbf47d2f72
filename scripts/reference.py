"""Stage `reference`: the base quantized again by each reference algorithm (`reference.algorithms`,
default plain RTN) with the rest of `quantize:` unchanged, so evaluate can show what AWQ gains in every
run's metrics. A stage of its own: DVC caches it and shows it; evaluate only scores."""
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, write_json
from ondevice.cli import params_option, stage
from ondevice.quantize import calibration_for
from ondevice.quantize.reference import run


@click.command()
@params_option
@click.option("--base", required=True)
@click.option("--train", "train_path", required=True, help="calibration rows, for algorithms that need them")
@click.option("--out", required=True, help="one folder per algorithm inside")
@click.option("--metrics", required=True)
@stage
def main(params_path, base, train_path, out, metrics):
    params = P.load(params_path)
    cfg = P.section(params, "reference")
    calib = calibration_for(params, Path(base), Path(train_path)) if set(cfg.algorithms) - {"rtn"} else None
    with atomic_dir(out) as tmp:
        result = run(Path(base), calib, P.section(params, "quantize"), tmp, cfg)
    write_json(metrics, result)
    click.echo(f"references {', '.join(result['algorithms']) or 'none'} -> {out}")


if __name__ == "__main__":
    main()
