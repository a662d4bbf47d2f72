"""GPU profile: AWQ and LoRA on CUDA for a random-init model of a real model's shape.

Used to prove the CUDA path and size it (time, peak GPU memory) without the real weights, e.g.
Phi-3.5-mini's shape on an H100. Token ids come from the SmolLM2 tokenizer, so the vocabulary is
that tokenizer's (49,152 instead of Phi-3.5's 32,064: +51M parameters, 1.3 %).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

PHI35_MINI = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)


def build_random_model(shape: dict, tokenizer_dir: Path, out_dir: Path, vocab_size: int):
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    config = Phi3Config(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=2, **shape)
    config.architectures = ["Phi3ForCausalLM"]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Phi3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    return model


def long_rows(rows: list[dict], tokens: int, tokenizer) -> list[dict]:
    """Join answers until each row's response is ~`tokens` long (LoRA batches of 4 x 512)."""
    out, i = [], 0
    while len(out) < 64:
        text = ""
        while len(tokenizer(text)["input_ids"]) < tokens:
            text += " " + rows[i % len(rows)]["response"]
            i += 1
        out.append({"prompt": rows[i % len(rows)]["prompt"], "response": text.strip()})
    return out


def profile(tokenizer_dir: Path, rows: list[dict], work: Path, calib_blocks: int = 128, seq_len: int = 512,
            steps: int = 100, r: int = 64) -> dict:
    from olive.common.quant.hf_utils import OliveHfQuantizationConfig
    from olive.model import HfModelHandler
    from olive.passes.pytorch.quant_utils import finalize
    from transformers import AutoTokenizer

    from ondevice.finetune import train
    from ondevice.quantize import calibration_ids
    from ondevice.quantize.awq import AwqConfig, awq

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    float_dir, q_dir = work / "float", work / "quantized"
    t0 = time.perf_counter()
    model = build_random_model(PHI35_MINI, tokenizer_dir, float_dir, len(tokenizer))
    result["parameters_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    result["build_s"] = round(time.perf_counter() - t0, 1)

    calib = calibration_ids(tokenizer, "chat", rows * 20, len(rows) * 20, seq_len)[:calib_blocks].cuda()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    cfg = AwqConfig(group_size=128, symmetric=False, grid=20, clip=True, clip_grid=20, clip_max_shrink=0.5)
    wrapper = awq(model, calib, cfg, device="cuda")
    torch.cuda.synchronize()
    result["awq_s"] = round(time.perf_counter() - t0, 1)
    result["awq_peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["calibration_tokens"] = int(calib.numel())
    t0 = time.perf_counter()
    qcfg = OliveHfQuantizationConfig(bits=4, symmetric=False, group_size=128, lm_head=False, embeds=False,
                                     overrides={})
    finalize(HfModelHandler(model_path=str(float_dir)), str(q_dir), wrapper, qcfg, "cuda")
    result["pack_and_save_s"] = round(time.perf_counter() - t0, 1)
    del model, wrapper
    torch.cuda.empty_cache()

    torch.cuda.reset_peak_memory_stats()
    lora = dict(r=r, alpha=2 * r, dropout=0.05, target_modules=["qkv_proj", "o_proj"], lr=2e-4, max_steps=steps,
                batch_size=4, seq_len=seq_len, seed=0, template="chat", device="cuda")
    t0 = time.perf_counter()
    _, history, summary = train(q_dir, tokenizer, long_rows(rows, seq_len, tokenizer), lora)
    result["lora_total_s_incl_load"] = round(time.perf_counter() - t0, 1)
    result["lora"] = summary
    result["lora_loss_first_last"] = [history[0]["loss"], history[-1]["loss"]]
    return result


if __name__ == "__main__":
    import sys

    from ondevice.data import read_rows

    tok_dir, data, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    res = profile(tok_dir, read_rows(data)[0], Path("/tmp/gpu_profile"))
    (out / "gpu_profile.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
