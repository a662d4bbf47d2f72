"""#28: where quantize's GPTQ rounding of the head belongs. Phi-3.5-mini's untied lm_head (32,064 x 3,072)
rounded by `ondevice.quantize.head.head_gptq` (GPTQ in float64 on onnxruntime's symmetric grid, block 32,
damp 0.1) on the GPU and on its host's CPU, with the Gram matrix of the GPU profile's 4,864 calibration
tokens. Before this, quantize rounded it on the host whatever quantize.device said.

Run on the device: python reports/gpu_h200_head_device/head_timing.py > $OUT/head_timing.json
"""
import json
import os
import time

import torch

from ondevice.quantize.head import head_gptq


def timed(w, gram, device):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = head_gptq(w.to(device), gram, 32, 0.1).cpu()
    torch.cuda.synchronize()
    return out, round(time.perf_counter() - t, 2)


torch.manual_seed(0)
w = torch.randn(32064, 3072) * 0.02
x = torch.randn(4864, 3072)
gram = x.T @ x / x.shape[0]
timed(w[:256, :256], gram[:256, :256], "cuda")  # CUDA context and kernels loaded before the clock
on_gpu, gpu_s = timed(w, gram, "cuda")
on_cpu, cpu_s = timed(w, gram, "cpu")
print(json.dumps({
    "gpu": torch.cuda.get_device_name(0), "cpu_threads": torch.get_num_threads(), "host_cpus": os.cpu_count(),
    "torch": torch.__version__, "head_shape": list(w.shape), "block_size": 32, "calibration_tokens": x.shape[0],
    "gpu_s": gpu_s, "cpu_s": cpu_s,
    "values_differing_gpu_vs_cpu": round((on_gpu != on_cpu).float().mean().item(), 6),
    "max_abs_diff": (on_gpu - on_cpu).abs().max().item(),
}, indent=1))
