"""Stage `optimize`: the int4 ONNX base model for onnxruntime-genai, with LoRA inputs for any adapter,
its int4 compute precision (MatMulNBits accuracy_level) as params.yaml sets it or as `auto` measures it."""
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, folder_bytes, require_free_space, write_json
from ondevice.cli import params_option, stage
from ondevice.export.accuracy_level import auto_examples
from ondevice.export.build import run


@click.command()
@params_option
@click.option("--quantized", required=True)
@click.option("--eval-rows", "eval_rows", required=True, help="eval split whose prompts `auto` scores the levels on")
@click.option("--adapter", required=True, help="the adapter those rows belong to (its template and seq_len)")
@click.option("--out", required=True)
@click.option("--metrics", required=True)
@stage
def main(params_path, quantized, eval_rows, adapter, out, metrics):
    params = P.load(params_path)
    cfg = P.section(params, "optimize")
    examples = auto_examples(Path(eval_rows), P.adapter(params, adapter), Path(quantized), cfg)
    require_free_space(out, int(1.5 * folder_bytes(quantized)), "the ONNX model")
    with atomic_dir(out) as tmp:
        result = run(Path(quantized), examples, tmp, cfg)
    write_json(metrics, result)
    level = result["accuracy_level"]
    click.echo(f"int4 ONNX {result['model_mb']} MB, LoRA inputs on {result['lora_nodes']} projections, "
               f"accuracy_level {level['accuracy_level']} ({level['chosen_by']}) -> {out}")


if __name__ == "__main__":
    main()
