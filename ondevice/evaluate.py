"""Loss and perplexity on the eval split, measured on what users deploy.

(a) the float base in PyTorch; (b) the shipped int4 ONNX model, no adapter; (c) the same ONNX
model with the adapter's tensors fed to its LoRA inputs, all through onnxruntime. Loss counts the
response tokens only (the prompt is given), exactly as in training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ondevice.text import IGNORE, encode_example


def _mean_loss(total: float, count: int) -> dict:
    loss = total / max(count, 1)
    return {"loss": round(loss, 5), "perplexity": round(math.exp(loss), 4), "tokens": count}


@torch.no_grad()
def torch_loss(model, examples: list[dict]) -> dict:
    total, count = 0.0, 0
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        labels = torch.tensor([ex["labels"]])
        logits = model(input_ids=ids).logits[0, :-1].float()
        target = labels[0, 1:]
        keep = target != IGNORE
        total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
        count += int(keep.sum())
    return _mean_loss(total, count)


class OnnxScorer:
    """Full-sequence scoring with the shipped decoder, with or without adapter tensors."""

    def __init__(self, onnx_dir: Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # LoRA defaults are overridable initializers on purpose
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(Path(onnx_dir) / "model.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        decoder = json.loads((Path(onnx_dir) / "genai_config.json").read_text())["model"]["decoder"]
        self.past = {}
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values"):
                shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])
                self.past[i.name] = np.zeros(shape, np.float32)

    def loss(self, examples: list[dict], adapter: dict | None = None) -> dict:
        total, count = 0.0, 0
        for ex in examples:
            ids = np.array([ex["input_ids"]], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), **self.past, **(adapter or {})}
            logits = self.session.run(["logits"], feed)[0][0, :-1].astype(np.float64)
            target = np.array(ex["labels"][1:])
            keep = target != IGNORE
            logits, target = logits[keep], target[keep]
            logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            total += float((logz - logits[np.arange(len(target)), target]).sum())
            count += int(keep.sum())
        return _mean_loss(total, count)


def generate(onnx_dir: Path, adapter_path: Path | None, adapter_name: str, prompts: list[str], template: str,
             tokenizer, max_new_tokens: int) -> list[str]:
    """Greedy answers through onnxruntime-genai, the way the chat client runs them."""
    from ondevice.runtime import open_model, stream_answer
    from ondevice.text import render

    model, og_tok, adapters = open_model(onnx_dir, {adapter_name: adapter_path} if adapter_path else None)
    answers = []
    for prompt in prompts:
        ids = og_tok.encode(render(tokenizer, template, prompt)[0])
        answer = "".join(stream_answer(model, og_tok, adapters, adapter_name, ids, max_new_tokens))
        answers.append(answer.replace("<|im_end|>", "").strip())
    return answers


def encode_rows(tokenizer, template: str, rows: list[dict], seq_len: int) -> list[dict]:
    return [encode_example(tokenizer, template, r, seq_len) for r in rows]
