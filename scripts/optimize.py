"""Stage `optimize`: the int4 ONNX base model for onnxruntime-genai, with LoRA inputs for any adapter,
its int4 compute precision (MatMulNBits accuracy_level) as params.yaml sets it or as `auto` measures it."""
import tempfile
from pathlib import Path

import click
from transformers import AutoTokenizer

from ondevice import params as P
from ondevice import threads
from ondevice.atomic import UserError, atomic_dir, folder_bytes, require_free_space, write_json
from ondevice.cli import params_option, stage
from ondevice.data import read_jsonl
from ondevice.export.accuracy_level import ship_accuracy_level
from ondevice.export.build import optimize
from ondevice.text import encode_example


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
    o = params["optimize"]
    examples = None
    if o["int4_accuracy_level"] == "auto":  # before the build: a missing split fails in a second
        if not Path(eval_rows).exists():
            raise UserError(f"{eval_rows} missing (optimize.int4_accuracy_level=auto scores on it); "
                            f"run `dvc repro data@{adapter}` or set a level")
        config, tokenizer = P.adapter_config(params, adapter), AutoTokenizer.from_pretrained(quantized)
        rows = read_jsonl(Path(eval_rows))[: o["auto_level_rows"]]
        examples = [encode_example(tokenizer, config["template"], r, config["seq_len"]) for r in rows]
    require_free_space(out, int(1.5 * folder_bytes(quantized)), "the ONNX model")
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as work:
        result = optimize(Path(quantized), tmp, o, Path(work))
        result["accuracy_level"] = ship_accuracy_level(tmp, o, examples, threads.count())
    write_json(metrics, result)
    level = result["accuracy_level"]
    click.echo(f"int4 ONNX {result['model_mb']} MB, LoRA inputs on {result['lora_nodes']} projections, "
               f"accuracy_level {level['accuracy_level']} ({level['chosen_by']}) -> {out}")


if __name__ == "__main__":
    main()
