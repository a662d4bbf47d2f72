"""Stage `evaluate`: every eval split scored by the float base, the shipped int4 base alone and the
int4 base with each adapter (its own and the others', so a wrong adapter shows); and each split by
the float base + its float LoRA (the float_lora stage): what int4 costs after finetuning."""
import json
from pathlib import Path

import click
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from ondevice import params as P
from ondevice import threads
from ondevice.atomic import UserError, write_json, write_text
from ondevice.cli import params_option, stage
from ondevice.data import conversation, read_jsonl
from ondevice.evaluate import encode_rows, float_lora_gap, generate, headline, score_matrix
from ondevice.live import log_summary
from ondevice.onnx_lora import read_adapter
from ondevice.onnx_scoring import OnnxScorer, kernel_guard, level_record, shipped_accuracy_level
from ondevice.quantize import load_dequantized, pick_device


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
    e, names = params["evaluate"], list(params["adapters"])
    paths = {n: Path(adapters_dir) / f"{n}.onnx_adapter" for n in names}
    for name in names:
        if not (Path(float_loras) / name / "adapter_config.json").exists():
            raise UserError(f"{Path(float_loras) / name} missing; run `dvc repro float_lora@{name}`")
    arrays = {n: read_adapter(p) for n, p in paths.items()}  # a missing or cut-off file fails here, before any work
    configs = {n: P.adapter_config(params, n) for n in names}
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = {n: read_jsonl(Path(prepared) / n / "eval.jsonl")[: e["max_rows"]] for n in names}
    examples = {n: encode_rows(tokenizer, configs[n]["template"], rows[n], configs[n]["seq_len"]) for n in names}

    qc = json.loads((Path(quantized) / "config.json").read_text())["quantization_config"]
    device = pick_device(e["device"])
    models = {"float_base": lambda: AutoModelForCausalLM.from_pretrained(base).eval().to(device),
              "quantized_base_torch": lambda: load_dequantized(quantized, device=device)}
    for folder in sorted(p for p in Path(references).glob("*") if p.is_dir()):  # the reference stage's
        if folder.name != qc.get("algorithm"):  # quantizations, scored beside ours
            models[f"{folder.name}_reference_torch"] = lambda folder=folder: load_dequantized(folder, device=device)
    scorer = OnnxScorer(Path(onnx_dir), threads.count())  # a queued sweep's share of the cores, else all
    result = {"quantization": {"algorithm": qc.get("algorithm", "unknown"), "bits": qc["bits"],
                               "group_size": qc["group_size"]},
              **score_matrix(models, scorer, examples, arrays)}

    def load_float_lora(split):  # the float_lora stage's adapter on the float base, as peft runs it
        return PeftModel.from_pretrained(models["float_base"](), str(Path(float_loras) / split)).eval()

    float_lora_gap(result, load_float_lora, examples)
    level = shipped_accuracy_level(Path(onnx_dir))
    result["accuracy_level"] = level_record(Path(onnx_dir))  # optimize's choice (auto: every level's scores)
    if level or scorer.provider != "cpu":  # reduced-precision compute (int8 on CPU, fp16 on CUDA): check it
        exact = OnnxScorer(Path(onnx_dir), threads.count(), accuracy_level=0, on_cpu=True)  # against CPU fp32
        guarded = {n: ex[: e["guard_rows"] or None] for n, ex in examples.items()}
        bar = result["accuracy_level"]["min_top1_agreement"]  # the bar optimize held the level to
        result["kernel_guard"] = kernel_guard(scorer, exact, guarded, arrays, level, bar)
    write_json(metrics, result)
    log_summary(live_dir, headline(result, names))

    lines = ["# Sample answers (greedy, shipped int4 ONNX model)\n"]
    for split in names:
        shown = [conversation(r) for r in rows[split][: e["generate_rows"]]]  # answer each one's last turn
        histories, template = [c[:-1] for c in shown], configs[split]["template"]
        plain = generate(Path(onnx_dir), None, split, histories, template, tokenizer, e["max_new_tokens"])
        tuned = generate(Path(onnx_dir), paths[split], split, histories, template, tokenizer, e["max_new_tokens"])
        lines.append(f"# {split} eval split\n")
        for chat, a, b in zip(shown, plain, tuned, strict=True):
            lines += [f"## {chat[-2]['content']}\n", f"- **reference:** {chat[-1]['content']}",
                      f"- **int4 base:** {a}", f"- **int4 base + {split} adapter:** {b}\n"]
    write_text(samples, "\n".join(lines) + "\n")
    for split in names:
        s = result[f"on_{split}"]
        others = ", ".join(f"{n} {s[f'adapter_{n}']['loss']}" for n in names)
        click.echo(f"{split} eval loss: float {s['float_base']['loss']}, int4 {s['quantized_base']['loss']}, "
                   f"int4 + adapter {others}; best: {s['best']}; float LoRA {s['float_lora']['loss']} "
                   f"(int4's perplexity gap {s['int4_lora_gap_pct']} %)")
    if "kernel_guard" in result:
        g = result["kernel_guard"]
        click.echo(f"{g['provider']} accuracy_level {g['accuracy_level']} vs cpu fp32: "
                   f"top-1 agreement >= {g['top1_agreement_min']}, "
                   f"mean KL <= {g['mean_kl_max']} ({'passed' if g['passed'] else 'BELOW'} {g['min_top1_agreement']})")


if __name__ == "__main__":
    main()
