"""Stage `evaluate`: eval-split loss/perplexity of float base, shipped int4 base, int4 base + adapter."""
import json
import tempfile
from pathlib import Path

import click
from transformers import AutoModelForCausalLM, AutoTokenizer

from ondevice import params as P
from ondevice.atomic import write_json, write_text
from ondevice.cli import params_option, stage
from ondevice.data import read_jsonl
from ondevice.evaluate import OnnxScorer, encode_rows, generate, torch_loss
from ondevice.onnx_lora import read_adapter
from ondevice.quantize import load_dequantized, quantize


def rtn_reference(base: Path, params: dict, examples: list[dict]) -> dict:
    q = {**params["quantize"], "algorithm": "rtn"}
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "rtn"
        out.mkdir()
        quantize(base, out, q, None, Path(work), params["optimize"]["int4_block_size"])
        return torch_loss(load_dequantized(out), examples)


@click.command()
@params_option
@click.option("--base", default="models/base", show_default=True)
@click.option("--quantized", default="models/quantized", show_default=True)
@click.option("--onnx", "onnx_dir", default="models/onnx", show_default=True)
@click.option("--eval", "eval_path", default="data/prepared/eval.jsonl", show_default=True)
@click.option("--metrics", default="metrics/evaluate.json", show_default=True)
@click.option("--samples", default="reports/samples.md", show_default=True)
@stage
def main(params_path, base, quantized, onnx_dir, eval_path, metrics, samples):
    params = P.load(params_path)
    e, f, o = params["evaluate"], params["finetune"], params["optimize"]
    rows = read_jsonl(eval_path)[: e["max_rows"]]
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = encode_rows(tokenizer, f["template"], rows, f["seq_len"])
    adapter_path = Path(onnx_dir) / "adapters" / f"{o['adapter_name']}.onnx_adapter"
    scorer = OnnxScorer(Path(onnx_dir))
    result = {
        "float_base": torch_loss(AutoModelForCausalLM.from_pretrained(base).eval(), examples),
        "quantized_base_torch": torch_loss(load_dequantized(quantized), examples),
        "quantized_base": scorer.loss(examples),
        "quantized_adapter": scorer.loss(examples, read_adapter(adapter_path)),
    }
    qc = json.loads((Path(quantized) / "config.json").read_text())["quantization_config"]
    result["quantization"] = {"algorithm": qc.get("algorithm", "unknown"), "bits": qc["bits"],
                              "group_size": qc["group_size"]}
    if qc.get("algorithm") != "rtn":
        # The same bits and group size with plain RTN (Olive's pass), scored the same way: the
        # algorithm's gain stays visible in every run's metrics, not only across experiments.
        result["rtn_reference_torch"] = rtn_reference(Path(base), params, examples)
        result["gain_vs_rtn_ppl"] = round(result["rtn_reference_torch"]["perplexity"]
                                          - result["quantized_base_torch"]["perplexity"], 4)
    result["adapter_gain_loss"] = round(result["quantized_base"]["loss"] - result["quantized_adapter"]["loss"], 5)
    cost = result["quantized_base"]["perplexity"] - result["float_base"]["perplexity"]
    result["quantization_cost_ppl"] = round(cost, 4)
    write_json(metrics, result)

    shown = rows[: e["generate_rows"]]
    prompts = [r["prompt"] for r in shown]
    plain = generate(Path(onnx_dir), None, o["adapter_name"], prompts, f["template"], tokenizer, e["max_new_tokens"])
    tuned = generate(Path(onnx_dir), adapter_path, o["adapter_name"], prompts, f["template"], tokenizer,
                     e["max_new_tokens"])
    lines = ["# Sample answers (greedy, shipped int4 ONNX model)\n"]
    for row, a, b in zip(shown, plain, tuned, strict=True):
        lines += [f"## {row['prompt']}\n", f"- **reference:** {row['response']}",
                  f"- **int4 base:** {a}", f"- **int4 base + {o['adapter_name']} adapter:** {b}\n"]
    write_text(samples, "\n".join(lines) + "\n")
    click.echo(f"eval loss: float {result['float_base']['loss']}, int4 {result['quantized_base']['loss']}, "
               f"int4+adapter {result['quantized_adapter']['loss']}")


if __name__ == "__main__":
    main()
