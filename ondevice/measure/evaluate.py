"""Loss and perplexity on the eval split, measured on what users deploy.

(a) the float base in PyTorch; (b) the shipped int4 ONNX model, no adapter; (c) the same ONNX
model with the adapter's tensors fed to its LoRA inputs, all through onnxruntime. Loss counts the
response tokens only (the prompt is given), exactly as in training.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ondevice.measure.onnx_scoring import OnnxScorer, mean_loss
from ondevice.text import IGNORE, encode_example


def _pad(seq: list[int], value: int, width: int) -> list[int]:
    return seq + [value] * (width - len(seq))


@torch.no_grad()
def torch_loss(model, examples: list[dict], batch_rows: int = 8) -> dict:
    """Mean loss over the response tokens. Rows go through the model a few at a time, sorted by length
    and right-padded (masked, so a row sees only itself), and the head runs on the response positions
    only: the same loss as row by row with every position's logits, in three quarters of the time on
    a 2-core CPU (the head is a quarter of a 135 M model's matrix work)."""
    total, count = 0.0, 0
    decoder, head = model.get_decoder(), model.get_output_embeddings()  # a PEFT model hands out its base's
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    for start in range(0, len(order), batch_rows):
        group = [examples[i] for i in order[start:start + batch_rows]]
        width = max(len(ex["input_ids"]) for ex in group)
        ids = torch.tensor([_pad(ex["input_ids"], 0, width) for ex in group], device=model.device)
        mask = torch.tensor([_pad([1] * len(ex["input_ids"]), 0, width) for ex in group], device=model.device)
        target = torch.tensor([_pad(ex["labels"], IGNORE, width) for ex in group], device=model.device)[:, 1:]
        keep = target != IGNORE
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # the final norm applied
        logits = head(hidden[:, :-1][keep]).float()
        total += torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum").item()
        count += int(keep.sum())
    return mean_loss(total, count)


def generate(onnx_dir: Path, adapter_path: Path | None, adapter_name: str, histories: list[list[dict]],
             template: str, tokenizer, max_new_tokens: int) -> list[str]:
    """Greedy answers to each conversation's last user turn through onnxruntime-genai, the way the chat
    client runs them."""
    from ondevice.runtime.client import kv_capacity_floor, open_model, stream_answer
    from ondevice.text import prompt_text

    model, og_tok, adapters = open_model(onnx_dir, {adapter_name: adapter_path} if adapter_path else None)
    floor, answers = kv_capacity_floor(onnx_dir), []
    for history in histories:
        ids = og_tok.encode(prompt_text(tokenizer, template, history))
        answer = "".join(stream_answer(model, og_tok, adapters, adapter_name, ids, max_new_tokens, floor))
        answers.append(answer.replace("<|im_end|>", "").strip())
    return answers


def encode_rows(tokenizer, template: str, rows: list[dict], seq_len: int) -> list[dict]:
    return [encode_example(tokenizer, template, r, seq_len) for r in rows]


def score_torch(models: dict, examples: dict) -> dict:
    """{model label: loader} x {split: examples} -> {split: {label: loss}}, one model in memory at a time."""
    import gc

    out = {split: {} for split in examples}
    for label, load in models.items():
        model = load()
        for split, ex in examples.items():
            out[split][label] = torch_loss(model, ex)
        del model
        gc.collect()
    return out


def score_matrix(torch_models: dict, scorer: OnnxScorer, examples: dict, adapters: dict) -> dict:
    """Every eval split scored by every PyTorch reference and by the shipped ONNX model, alone and
    with each adapter (its own and the others', so a wrong adapter shows). Keys per split:
    each torch label, quantized_base, adapter_NAME, best, own_adapter_gain_loss,
    quantization_cost_ppl, and gain_vs_rtn_ppl where an RTN reference was scored."""
    result = {}
    for split, scores in score_torch(torch_models, examples).items():
        scores["quantized_base"] = scorer.loss(examples[split])
        for name, arrays in adapters.items():
            scores[f"adapter_{name}"] = scorer.loss(examples[split], arrays)
        candidates = ["quantized_base"] + [f"adapter_{n}" for n in adapters]
        scores["best"] = min(candidates, key=lambda c: scores[c]["loss"]).removeprefix("adapter_")
        own = scores[f"adapter_{split}"]["loss"]
        scores["own_adapter_gain_loss"] = round(scores["quantized_base"]["loss"] - own, 5)
        scores["quantization_cost_ppl"] = round(scores["quantized_base"]["perplexity"]
                                                - scores["float_base"]["perplexity"], 4)
        if "rtn_reference_torch" in scores:
            scores["gain_vs_rtn_ppl"] = round(scores["rtn_reference_torch"]["perplexity"]
                                              - scores["quantized_base_torch"]["perplexity"], 4)
        result[f"on_{split}"] = scores
    result["own_adapter_best_everywhere"] = all(result[f"on_{n}"]["best"] == n for n in adapters)
    return result


def float_lora_gap(result: dict, load_float_lora, examples: dict) -> None:
    """What int4 costs after finetuning, per split: the shipped int4 model + that split's adapter
    against the float base + a LoRA trained on it with the same data, steps and seed
    (`load_float_lora(split)`), as a perplexity gap in % (positive: int4 is worse)."""
    import gc

    for split, ex in examples.items():
        model = load_float_lora(split)
        scores = result[f"on_{split}"]
        scores["float_lora"] = torch_loss(model, ex)
        del model
        gc.collect()
        ratio = scores[f"adapter_{split}"]["perplexity"] / scores["float_lora"]["perplexity"]
        scores["int4_lora_gap_pct"] = round(100 * (ratio - 1), 3)


def headline(result: dict, names: list[str]) -> dict:
    """The figures a person compares between runs (DVCLive's summary): per split, the float base's,
    the shipped int4 base's and the int4 base + own adapter's perplexity, that adapter's loss, and
    the float base + float LoRA's perplexity with int4's gap to it; the MatMulNBits level shipped and
    the kernel guard's worst agreement and KL."""
    out = {}
    for split in names:
        scores = result[f"on_{split}"]
        out[f"{split}/float_ppl"] = scores["float_base"]["perplexity"]
        out[f"{split}/int4_ppl"] = scores["quantized_base"]["perplexity"]
        out[f"{split}/int4_adapter_ppl"] = scores[f"adapter_{split}"]["perplexity"]
        out[f"{split}/int4_adapter_loss"] = scores[f"adapter_{split}"]["loss"]
        if "float_lora" in scores:
            out[f"{split}/float_lora_ppl"] = scores["float_lora"]["perplexity"]
            out[f"{split}/int4_lora_gap_pct"] = scores["int4_lora_gap_pct"]
    if "accuracy_level" in result:  # the MatMulNBits level shipped (with auto: the one it chose)
        out["guard/accuracy_level"] = result["accuracy_level"]["accuracy_level"]
    if "kernel_guard" in result:
        out["guard/top1_agreement_min"] = result["kernel_guard"]["top1_agreement_min"]
        out["guard/mean_kl_max"] = result["kernel_guard"]["mean_kl_max"]
    return out


def run(base: Path, quantized: Path, references: Path, float_loras: Path, onnx_dir: Path, adapters_dir: Path,
        prepared: Path, adapters: dict, out: Path, cfg) -> dict:
    """The evaluate stage: every eval split scored by the float base, the shipped int4 base alone, the
    int4 base with each adapter (its own and the others', so a wrong adapter shows) and the float base
    + its float LoRA; the kernel guard where the shipped graph computes in reduced precision. cfg: the
    params.Evaluate section; adapters: name -> params.AdapterConfig (each split's template and
    seq_len). Sample answers go to the markdown file `out`; returns the metrics."""

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ondevice import threads
    from ondevice.atomic import UserError, write_text
    from ondevice.checkpoint import load_dequantized, pick_device, quantization_config
    from ondevice.data import read_jsonl
    from ondevice.export.onnx_lora import read_adapter
    from ondevice.measure.onnx_scoring import kernel_guard, level_record, shipped_accuracy_level

    e, names, configs = cfg, list(adapters), adapters
    paths = {n: adapters_dir / f"{n}.onnx_adapter" for n in names}
    for name in names:
        if not (float_loras / name / "adapter_config.json").exists():
            raise UserError(f"{float_loras / name} missing; run `dvc repro float_lora@{name}`")
    arrays = {n: read_adapter(p) for n, p in paths.items()}  # a missing or cut-off file fails here, before any work
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = {n: read_jsonl(prepared / n / "eval.jsonl")[: e.max_rows] for n in names}
    examples = {n: encode_rows(tokenizer, configs[n]["template"], rows[n], configs[n]["seq_len"]) for n in names}

    qc = quantization_config(quantized)
    device = pick_device(e.device)
    models = {"float_base": lambda: AutoModelForCausalLM.from_pretrained(base).eval().to(device),
              "quantized_base_torch": lambda: load_dequantized(quantized, device=device)}
    for folder in sorted(p for p in references.glob("*") if p.is_dir()):  # the reference stage's
        if folder.name != qc.get("algorithm"):  # quantizations, scored beside ours
            models[f"{folder.name}_reference_torch"] = lambda folder=folder: load_dequantized(folder, device=device)
    scorer = OnnxScorer(onnx_dir, threads.count())  # a queued sweep's share of the cores, else all
    result = {"quantization": {"algorithm": qc.get("algorithm", "unknown"), "bits": qc["bits"],
                               "group_size": qc["group_size"]},
              **score_matrix(models, scorer, examples, arrays)}

    def load_float_lora(split):  # the float_lora stage's adapter on the float base, as peft runs it
        return PeftModel.from_pretrained(models["float_base"](), str(float_loras / split)).eval()

    float_lora_gap(result, load_float_lora, examples)
    level = shipped_accuracy_level(onnx_dir)
    result["accuracy_level"] = level_record(onnx_dir)  # optimize's choice (auto: every level's scores)
    if level or scorer.provider != "cpu":  # reduced-precision compute (int8 on CPU, fp16 on CUDA): check it
        exact = OnnxScorer(onnx_dir, threads.count(), accuracy_level=0, on_cpu=True)  # against CPU fp32
        guarded = {n: ex[: e.guard_rows or None] for n, ex in examples.items()}
        bar = result["accuracy_level"]["min_top1_agreement"]  # the bar optimize held the level to
        result["kernel_guard"] = kernel_guard(scorer, exact, guarded, arrays, level, bar)
    write_text(out, samples(onnx_dir, paths, rows, configs, tokenizer, e.max_new_tokens, e.generate_rows))
    return result


def samples(onnx_dir: Path, paths: dict, rows: dict, configs: dict, tokenizer, max_new_tokens: int, n: int) -> str:
    """samples.md: greedy answers to each split's first `n` eval conversations (their last turn),
    by the int4 base and by the int4 base + the split's own adapter, beside the reference."""
    from ondevice.data import conversation

    lines = ["# Sample answers (greedy, shipped int4 ONNX model)\n"]
    for split, path in paths.items():
        shown = [conversation(r) for r in rows[split][:n]]
        histories, template = [c[:-1] for c in shown], configs[split]["template"]
        plain = generate(onnx_dir, None, split, histories, template, tokenizer, max_new_tokens)
        tuned = generate(onnx_dir, path, split, histories, template, tokenizer, max_new_tokens)
        lines.append(f"# {split} eval split\n")
        for chat, a, b in zip(shown, plain, tuned, strict=True):
            lines += [f"## {chat[-2]['content']}\n", f"- **reference:** {chat[-1]['content']}",
                      f"- **int4 base:** {a}", f"- **int4 base + {split} adapter:** {b}\n"]
    return "\n".join(lines) + "\n"


def summary_lines(result: dict, names: list[str]) -> list[str]:
    """What the stage prints: each split's losses and int4's gap, and the kernel guard's verdict."""
    out = []
    for split in names:
        s = result[f"on_{split}"]
        others = ", ".join(f"{n} {s[f'adapter_{n}']['loss']}" for n in names)
        out.append(f"{split} eval loss: float {s['float_base']['loss']}, int4 {s['quantized_base']['loss']}, "
                   f"int4 + adapter {others}; best: {s['best']}; float LoRA {s['float_lora']['loss']} "
                   f"(int4's perplexity gap {s['int4_lora_gap_pct']} %)")
    if "kernel_guard" in result:
        g = result["kernel_guard"]
        out.append(f"{g['provider']} accuracy_level {g['accuracy_level']} vs cpu fp32: "
                   f"top-1 agreement >= {g['top1_agreement_min']}, mean KL <= {g['mean_kl_max']} "
                   f"({'passed' if g['passed'] else 'BELOW'} {g['min_top1_agreement']})")
    return out
