"""LoRA on top of the quantized base, nanoGPT style: one readable loop.

The frozen base is `load_dequantized(quantized_dir)`: float tensors equal to the int4 weights
that ship, so the adapter learns to correct the quantized model it will run with. With
`float_base`, the same loop trains on the float model instead: evaluate's reference for what int4
costs after finetuning (the `float_lora` stage).
"""
from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ondevice.atomic import UserError
from ondevice.checkpoint import load_dequantized, pick_device
from ondevice.text import IGNORE, collate, encode_example


def cpu_computes_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU has native bf16 arithmetic (AVX512-BF16 or AMX): there autocast to bf16
    halves a LoRA step (2.3 -> 1.2 s on a 2-core Zen 4); on AVX2 alone it is emulated, and slower."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags = set(cpuinfo.split())
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # ...without its debugging aid: in that mode torch fills every new tensor with NaN before use (3,700
    # fills a bf16 LoRA step; steps about 10 % faster without, on a 2-core EPYC). Same losses to the last bit.
    torch.utils.deterministic.fill_uninitialized_memory = False


def lora_model(base, p: dict):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=p["r"], lora_alpha=p["alpha"], lora_dropout=p["dropout"],
                        target_modules=list(p["target_modules"]), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def batches(examples: list[dict], batch_size: int, seed: int, length_windows: int = 0):
    """Endless shuffled epochs, reproducible from the seed; an epoch's last partial batch is dropped.

    A batch is padded to its longest row. With length_windows = N, each epoch's shuffled rows are
    sorted by length inside windows of N batches and the batches are shuffled again: rows of like
    length share a batch (garden's padding 44 % -> 6 % at N = 8) and every epoch still mixes new ones.
    """
    rng = random.Random(seed)
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        if len(order) >= batch_size:  # drop before sorting, so the rows left out are random, not the longest
            order = order[:len(order) - len(order) % batch_size]
        starts = list(range(0, len(order), batch_size))
        if length_windows:
            window = length_windows * batch_size
            order = [j for w in range(0, len(order), window)
                     for j in sorted(order[w:w + window], key=lambda j: len(examples[j]["input_ids"]))]
            rng.shuffle(starts)
        for i in starts:
            yield [examples[j] for j in order[i:i + batch_size]]


def response_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token loss over response tokens, computing the (large) vocab projection only there.

    Same value as the HF loss with prompt labels masked, at about half the lm_head cost, since
    prompts (system turn included) are about half of every example.
    """
    causal_lm = model.get_base_model()
    hidden = causal_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = causal_lm.lm_head(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, labels[keep])


def load_float(folder, dtype=torch.float32, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)


def train(base_dir, tokenizer, train_rows: list[dict], p: dict, log=None,
          float_base: bool = False) -> tuple[object, list[dict], dict]:
    """Train LoRA on the dequantized int4 checkpoint in base_dir (or, float_base, on the float model
    there); return (peft model, per-step log, summary metrics)."""
    device = pick_device(p["device"])
    base = (load_float if float_base else load_dequantized)(base_dir, torch.bfloat16 if device == "cuda"
                                                            else torch.float32, device)
    # On the CPU, attention as plain matmuls and a softmax: torch's SDPA kernel for the CPU spent a fifth
    # of a bf16 LoRA step in its backward (short rows, 9 heads of 64), where eager's products autocast
    # to bf16 like every other matmul (2-core EPYC: 2.0 -> 1.6 s a step). On CUDA, SDPA is the fast one.
    if (p["attention"] if p["attention"] != "auto" else "eager" if device == "cpu" else "sdpa") == "eager":
        base.set_attn_implementation("eager")
    # CPU: fp32 weights and optimizer, matmuls autocast to bf16 where the CPU computes bf16 natively
    cpu_bf16 = device == "cpu" and (cpu_computes_bf16() if p["cpu_bf16"] == "auto" else p["cpu_bf16"])
    set_seed(p["seed"])  # after the base: the LoRA's initial weights must not depend on how the base was built
    model = lora_model(base, p)
    model.train()
    examples = [encode_example(tokenizer, p["template"], r, p["seq_len"]) for r in train_rows]
    truncated = sum(e["truncated"] for e in examples)
    if truncated:
        print(f"warning: {truncated} of {len(examples)} training rows are longer than finetune.seq_len={p['seq_len']} "
              "tokens and were truncated; raise finetune.seq_len to keep them whole", file=sys.stderr)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainable = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=p["lr"], weight_decay=0.0)
    warmup = max(1, p["max_steps"] // 10)

    def lr_at(step):  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return p["lr"] * (step + 1) / warmup
        progress = (step - warmup) / max(1, p["max_steps"] - warmup)
        return p["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    history, t0 = [], time.perf_counter()
    data = batches(examples, p["batch_size"], p["seed"], p["length_windows"])
    bar = tqdm(range(p["max_steps"]), desc="LoRA", unit="step")
    for step in bar:
        batch = {k: v.to(device) for k, v in collate(next(data), pad).items()}
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
            loss = response_loss(model, batch)
        if not torch.isfinite(loss):  # one NaN step poisons every weight after it: such an adapter must never ship
            raise UserError(f"the LoRA loss is {loss.item()} at step {step}; no adapter was written. Lower the "
                            f"learning rate (lr={p['lr']}) or check the data: a batch whose rows have no response "
                            "token within seq_len has no loss (the data stage drops such rows)")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append({"step": step, "loss": round(loss.item(), 5), "lr": lr_at(step)})
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if log:
            log(history[-1])
    seconds = time.perf_counter() - t0
    summary = {
        "train_loss_first": history[0]["loss"],
        "train_loss_last": round(sum(h["loss"] for h in history[-10:]) / len(history[-10:]), 5),
        "steps": p["max_steps"],
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / p["max_steps"], 3),
        "trainable_parameters": sum(q.numel() for q in trainable),
        "device": device,
        "cpu_bf16": cpu_bf16,
        "attention": base.config._attn_implementation,
    }
    if device == "cuda":
        summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return model, history, summary


def run(base: Path, train_path: Path, out_dir: Path, cfg, float_base: bool = False, log=None) -> dict:
    """The finetune@NAME stage (float_lora@NAME with float_base): LoRA as cfg (a params.AdapterConfig)
    says, on the model in `base`, over the rows in train_path; the adapter saved in out_dir (peft's
    format); returns the summary metrics. log(step) is called after every step."""
    from transformers import AutoTokenizer

    from ondevice.data import read_jsonl

    model, _, summary = train(base, AutoTokenizer.from_pretrained(base), read_jsonl(train_path), cfg, log,
                              float_base=float_base)
    # peft keeps target_modules as a set and writes it in the process's string-hash order: sorted, the
    # same weights are the same bytes in every run, and DVC reruns nothing after a retrain that changed none
    lora = model.peft_config["default"]
    lora.target_modules = sorted(lora.target_modules)
    model.save_pretrained(out_dir)
    return summary
