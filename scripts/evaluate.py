"""Stage `evaluate`: every eval split scored by the float base, the shipped int4 base alone and the
int4 base with each adapter (its own and the others', so a wrong adapter shows); and each split by
the float base + its float LoRA (the float_lora stage): what int4 costs after finetuning."""
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_json
from ondevice.cli import params_option, stage
from ondevice.live import log_summary
from ondevice.measure.evaluate import headline, run, summary_lines


@click.command()
@params_option
@click.option("--base", required=True)
@click.option("--quantized", required=True)
@click.option("--references", required=True, help="the reference stage's folders")
@click.option("--float-loras", required=True, help="the float_lora stage's folders")
@click.option("--onnx", "onnx_dir", required=True)
@click.option("--adapters", "adapters_dir", required=True)
@click.option("--prepared", required=True)
@click.option("--metrics", required=True)
@click.option("--samples", required=True)
@click.option("--live", "live_dir", required=True)
@stage
def main(params_path, base, quantized, references, float_loras, onnx_dir, adapters_dir, prepared, metrics, samples,
         live_dir):
    params = P.load(params_path)
    adapters = P.adapters(params)
    inputs = map(Path, (base, quantized, references, float_loras, onnx_dir, adapters_dir, prepared))
    result = run(*inputs, adapters, Path(samples), P.section(params, "evaluate"))
    write_json(metrics, result)
    log_summary(live_dir, headline(result, list(adapters)))
    for line in summary_lines(result, list(adapters)):
        click.echo(line)


if __name__ == "__main__":
    main()
