"""The CUDA code paths (AWQ search and LoRA training on the GPU); skipped cleanly without CUDA."""
import pytest
import torch

from conftest import LORA, run_quantize
from ondevice.checkpoint import load_dequantized
from ondevice.finetune import train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_awq_on_cuda_matches_the_cpu_result_and_beats_rtn(tiny_dir, tmp_path_factory, calib, quantized_dir):
    from transformers import AutoModelForCausalLM

    gpu_dir, metrics = run_quantize(tiny_dir, tmp_path_factory, calib, device="cuda")
    assert metrics["device"] == "cuda"
    rtn_dir, _ = run_quantize(tiny_dir, tmp_path_factory, calib, algorithm="rtn")
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        target = ref(input_ids=calib[:4]).logits
        err = {name: (load_dequantized(d)(input_ids=calib[:4]).logits - target).pow(2).mean().item()
               for name, d in (("gpu", gpu_dir), ("cpu", quantized_dir), ("rtn", rtn_dir))}
    assert err["gpu"] < err["rtn"], err
    assert err["gpu"] == pytest.approx(err["cpu"], rel=0.25), err  # bf16 on GPU, fp32 on CPU


@needs_cuda
def test_lora_trains_on_cuda(quantized_dir, tokenizer, rows):
    model, history, summary = train(quantized_dir, tokenizer, rows, {**LORA, "device": "cuda", "max_steps": 5})
    assert summary["device"] == "cuda" and summary["peak_gpu_memory_gib"] > 0
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    # lora_B starts at zero: non-zero now means the optimizer stepped on the GPU
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.is_cuda and p.abs().sum() > 0 for p in lora_b)


def test_cuda_requested_without_gpu_is_a_clear_error(monkeypatch):
    from ondevice.atomic import UserError
    from ondevice.checkpoint import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="device=cuda but torch sees no CUDA GPU"):
        pick_device("cuda")
