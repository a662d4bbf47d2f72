"""Stage `evaluate`: every eval split scored by the float base, the shipped int4 base alone and the
int4 base with each adapter (its own and the others', so a wrong adapter shows)."""
import gc
import json
import tempfile
from pathlib import Path

import click
from transformers import AutoModelForCausalLM, AutoTokenizer

from ondevice import params as P
from ondevice import threads
from ondevice.atomic import UserError, write_json, write_text
from ondevice.cli import params_option, stage
from ondevice.data import read_jsonl
from ondevice.evaluate import OnnxScorer, encode_rows, generate, torch_loss
from ondevice.onnx_lora import read_adapter
from ondevice.quantize import load_dequantized, pick_device, quantize


def rtn_model(base: Path, params: dict):
    """The same bits and group size with plain RTN (Olive's pass): the algorithm's gain stays
    visible in every run's metrics, not only across experiments."""
    q = {**params["quantize"], "algorithm": "rtn"}
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "rtn"
        out.mkdir()
        quantize(base, out, q, None, Path(work), params["optimize"]["int4_block_size"])
        return load_dequantized(out)


def score_torch(models: dict, examples: dict) -> dict:
    """{model label: loader} x {split: examples} -> {split: {label: loss}}, one model in memory at a time."""
    out = {split: {} for split in examples}
    for label, load in models.items():
        model = load()
        for split, ex in examples.items():
            out[split][label] = torch_loss(model, ex)
        del model
        gc.collect()
    return out


@click.command()
@params_option
@click.option("--base", default="models/base", show_default=True)
@click.option("--quantized", default="models/quantized", show_default=True)
@click.option("--onnx", "onnx_dir", default="models/onnx", show_default=True)
@click.option("--adapters", "adapters_dir", default="models/adapters", show_default=True)
@click.option("--prepared", default="data/prepared", show_default=True)
@click.option("--metrics", default="metrics/evaluate.json", show_default=True)
@click.option("--samples", default="reports/samples.md", show_default=True)
@stage
def main(params_path, base, quantized, onnx_dir, adapters_dir, prepared, metrics, samples):
    params = P.load(params_path)
    e, names = params["evaluate"], list(params["adapters"])
    paths = {n: Path(adapters_dir) / f"{n}.onnx_adapter" for n in names}
    for name, path in paths.items():
        if not path.exists():
            raise UserError(f"{path} missing; run `dvc repro adapter@{name}`")
    configs = {n: P.adapter_config(params, n) for n in names}
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = {n: read_jsonl(Path(prepared) / n / "eval.jsonl")[: e["max_rows"]] for n in names}
    examples = {n: encode_rows(tokenizer, configs[n]["template"], rows[n], configs[n]["seq_len"]) for n in names}

    qc = json.loads((Path(quantized) / "config.json").read_text())["quantization_config"]
    device = pick_device(e["device"])
    models = {"float_base": lambda: AutoModelForCausalLM.from_pretrained(base).eval().to(device),
              "quantized_base_torch": lambda: load_dequantized(quantized).to(device)}
    if qc.get("algorithm") != "rtn" and e["rtn_reference"]:
        models["rtn_reference_torch"] = lambda: rtn_model(Path(base), params).to(device)
    result = {"quantization": {"algorithm": qc.get("algorithm", "unknown"), "bits": qc["bits"],
                               "group_size": qc["group_size"]}}
    scorer = OnnxScorer(Path(onnx_dir), threads.count())  # a queued sweep's share of the cores, else all
    arrays = {n: read_adapter(p) for n, p in paths.items()}
    for split, scores in score_torch(models, examples).items():
        scores["quantized_base"] = scorer.loss(examples[split])
        for n in names:
            scores[f"adapter_{n}"] = scorer.loss(examples[split], arrays[n])
        candidates = ["quantized_base"] + [f"adapter_{n}" for n in names]
        scores["best"] = min(candidates, key=lambda c: scores[c]["loss"]).removeprefix("adapter_")
        own = scores[f"adapter_{split}"]["loss"]
        scores["own_adapter_gain_loss"] = round(scores["quantized_base"]["loss"] - own, 5)
        scores["quantization_cost_ppl"] = round(scores["quantized_base"]["perplexity"]
                                                - scores["float_base"]["perplexity"], 4)
        if "rtn_reference_torch" in scores:
            scores["gain_vs_rtn_ppl"] = round(scores["rtn_reference_torch"]["perplexity"]
                                              - scores["quantized_base_torch"]["perplexity"], 4)
        result[f"on_{split}"] = scores
    result["own_adapter_best_everywhere"] = all(result[f"on_{n}"]["best"] == n for n in names)
    write_json(metrics, result)

    lines = ["# Sample answers (greedy, shipped int4 ONNX model)\n"]
    for split in names:
        shown = rows[split][: e["generate_rows"]]
        prompts, template = [r["prompt"] for r in shown], configs[split]["template"]
        plain = generate(Path(onnx_dir), None, split, prompts, template, tokenizer, e["max_new_tokens"])
        tuned = generate(Path(onnx_dir), paths[split], split, prompts, template, tokenizer, e["max_new_tokens"])
        lines.append(f"# {split} eval split\n")
        for row, a, b in zip(shown, plain, tuned, strict=True):
            lines += [f"## {row['prompt']}\n", f"- **reference:** {row['response']}",
                      f"- **int4 base:** {a}", f"- **int4 base + {split} adapter:** {b}\n"]
    write_text(samples, "\n".join(lines) + "\n")
    for split in names:
        s = result[f"on_{split}"]
        others = ", ".join(f"{n} {s[f'adapter_{n}']['loss']}" for n in names)
        click.echo(f"{split} eval loss: float {s['float_base']['loss']}, int4 {s['quantized_base']['loss']}, "
                   f"int4 + adapter {others}; best: {s['best']}")


if __name__ == "__main__":
    main()
