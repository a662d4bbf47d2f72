"""Loss and perplexity on the eval split, measured on what users deploy.

(a) the float base in PyTorch; (b) the shipped int4 ONNX model, no adapter; (c) the same ONNX
model with the adapter's tensors fed to its LoRA inputs, all through onnxruntime. Loss counts the
response tokens only (the prompt is given), exactly as in training.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ondevice.onnx_scoring import OnnxScorer, mean_loss
from ondevice.text import IGNORE, encode_example


@torch.no_grad()
def torch_loss(model, examples: list[dict]) -> dict:
    total, count = 0.0, 0
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]], device=model.device)
        labels = torch.tensor([ex["labels"]], device=model.device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        target = labels[0, 1:]
        keep = target != IGNORE
        total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
        count += int(keep.sum())
    return mean_loss(total, count)


def generate(onnx_dir: Path, adapter_path: Path | None, adapter_name: str, histories: list[list[dict]],
             template: str, tokenizer, max_new_tokens: int) -> list[str]:
    """Greedy answers to each conversation's last user turn through onnxruntime-genai, the way the chat
    client runs them."""
    from ondevice.runtime import kv_capacity_floor, open_model, stream_answer
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
