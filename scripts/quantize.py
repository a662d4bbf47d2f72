"""Stage `quantize`: 4-bit weight-only quantization (AWQ, or Olive's RTN/GPTQ) in Olive's format."""
from pathlib import Path

import click
from transformers import AutoConfig

from ondevice import params as P
from ondevice.atomic import atomic_dir, folder_bytes, require_free_space, write_json
from ondevice.cli import params_option, stage
from ondevice.quantize import calibration_for, run


@click.command()
@params_option
@click.option("--base", required=True)
@click.option("--train", "train_path", required=True,
              help="calibration rows: the train split of the quantize.calibration adapter")
@click.option("--out", required=True)
@click.option("--metrics", required=True)
@stage
def main(params_path, base, train_path, out, metrics):
    params = P.load(params_path)
    cfg = P.section(params, "quantize")
    P.check_model_fit(params, AutoConfig.from_pretrained(base))
    # Olive's working copy plus the packed output: about the size of the float base, with margin
    require_free_space(out, int(1.5 * folder_bytes(base)), "the quantized model")
    calib = calibration_for(params, Path(base), Path(train_path))
    with atomic_dir(out) as tmp:
        result = run(Path(base), calib, tmp, cfg)
    write_json(metrics, result)
    click.echo(f"{cfg.algorithm} int{result['bits']} g{cfg.group_size} in {result['seconds']} s -> {out}")


if __name__ == "__main__":
    main()
