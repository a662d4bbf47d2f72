"""Stage `reference`: the base quantized again by each reference algorithm (`reference.algorithms`,
default plain RTN) with the rest of `quantize:` unchanged, so evaluate can show what AWQ gains in every
run's metrics. A stage of its own: DVC caches it and shows it; evaluate only scores."""
import tempfile
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, write_json
from ondevice.cli import params_option, stage
from ondevice.quantize import calibration_for, quantize


@click.command()
@params_option
@click.option("--base", required=True)
@click.option("--train", "train_path", required=True, help="calibration rows, for algorithms that need them")
@click.option("--out", required=True, help="one folder per algorithm inside")
@click.option("--metrics", required=True)
@stage
def main(params_path, base, train_path, out, metrics):
    params = P.load(params_path)
    algorithms = params["reference"]["algorithms"]
    calib = calibration_for(params, Path(base), Path(train_path)) if set(algorithms) - {"rtn"} else None
    seconds = {}
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as work:
        for algorithm in algorithms:
            q = {**params["quantize"], "algorithm": algorithm}
            (Path(tmp) / algorithm).mkdir()
            result = quantize(Path(base), Path(tmp) / algorithm, q, calib, Path(work) / algorithm)
            seconds[algorithm] = result["seconds"]
    write_json(metrics, {"algorithms": list(seconds), "seconds": seconds})
    click.echo(f"references {', '.join(seconds) or 'none'} -> {out}")


if __name__ == "__main__":
    main()
