"""Stage `optimize`: the int4 ONNX base model for onnxruntime-genai, with LoRA inputs for any adapter."""
import tempfile
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, folder_bytes, require_free_space, write_json
from ondevice.cli import params_option, stage
from ondevice.export import optimize


@click.command()
@params_option
@click.option("--quantized", default="models/quantized", show_default=True)
@click.option("--out", default="models/onnx", show_default=True)
@click.option("--metrics", default="metrics/optimize.json", show_default=True)
@stage
def main(params_path, quantized, out, metrics):
    params = P.load(params_path)
    o = params["optimize"]
    require_free_space(out, int(1.5 * folder_bytes(quantized)), "the ONNX model")
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as work:
        result = optimize(Path(quantized), tmp, o, Path(work))
    write_json(metrics, result)
    click.echo(f"int4 ONNX {result['model_mb']} MB, LoRA inputs on {result['lora_nodes']} projections -> {out}")


if __name__ == "__main__":
    main()
