"""The int4 head: the (tied) embedding / lm_head, which the ONNX builder quantizes itself.

The builder rounds what the checkpoint leaves in float with onnxruntime's symmetric int4 RTN at
`head_block_size`: per block the weight of largest magnitude becomes code 0 (-8 x scale), and the
scale follows from it. We round the head here on that same grid, so training, evaluation and the
shipped model see one head, and the builder's rounding reproduces ours bit for bit.

With `quantize.head_gptq` the head is rounded by GPTQ instead of to nearest: its input (the final
norm's output of the int4 decoder on the calibration text) weights the error, as for every decoder
projection. Each block's largest weight keeps its nearest code, so the builder derives the same grid.
On SmolLM2 the head is a fifth of the weights and its plain rounding most of the int4 loss (#18).
"""
from __future__ import annotations

from pathlib import Path

import torch
from olive.common.quant.utils import WeightQuantizer

from ondevice.quantize.gptq_round import gptq_round

EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"


def ort_int4_fake_quant(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """Round a [out, in] weight exactly as onnxruntime's MatMulNBits quantizer does (symmetric int4,
    the builder's default for tensors it quantizes itself) and return the dequantized floats."""
    import numpy as np
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    w = np.ascontiguousarray(weight.detach().float().numpy().T)  # [K, N] as the quantizer expects
    k, n = w.shape
    blocks = (k + block_size - 1) // block_size
    packed = np.zeros((n, blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, w, scales, zero_points, block_size, n, k, True)
    q = np.stack([packed & 15, packed >> 4], -1).reshape(n, blocks, block_size).astype(np.float32)
    deq = (q - 8.0) * scales[:, :, None]
    return torch.from_numpy(deq.reshape(n, blocks * block_size)[:, :k].copy())


def head_gptq(weight: torch.Tensor, gram: torch.Tensor, block_size: int, damp: float) -> torch.Tensor:
    """GPTQ rounding of the head on onnxruntime's symmetric grid, each block's largest weight fixed."""
    w = weight.float()
    blocks = w.reshape(w.shape[0], -1, block_size)
    largest = blocks.abs().argmax(-1, keepdim=True)
    scales = torch.gather(blocks, -1, largest).squeeze(-1) / -8  # that weight is code 0: (0 - 8) x scale
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)  # an all-zero block stays zero
    fixed = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, largest, True).reshape(w.shape)
    grid = WeightQuantizer(bits=4, symmetric=True, group_size=block_size)  # codes 0..15, zero point 8
    zero_points = torch.full_like(scales, 8, dtype=torch.int32)
    return gptq_round(w, gram.to(w.device), scales, zero_points, grid, damp, fixed=fixed)


@torch.no_grad()
def head_input_gram(folder: Path, calib: torch.Tensor, device: str) -> torch.Tensor:
    """X^T X / n of the head's input: the int4 decoder's (folder, head still float) final hidden states."""
    from ondevice.checkpoint import load_dequantized

    model = load_dequantized(folder, device=device)
    x = model.model(input_ids=calib.to(device)).last_hidden_state.float()
    x = x.reshape(-1, x.shape[-1])
    return (x.T @ x / x.shape[0]).cpu()


def round_head(folder: Path, block_size: int, gram: torch.Tensor | None = None, damp: float = 0.0,
               device: str = "cpu") -> None:
    """Put the float embedding / lm_head of `folder` on the int4 grid the ONNX builder will give it:
    to nearest, or (gram given) the tensor that computes the logits by GPTQ on that grid, on `device`
    (quantize's: Phi-3.5's 32,064 x 3,072 head took 22.6 s on a 16-core host, 1.0 s on an H200, bit-equal)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    head = LM_HEAD if LM_HEAD in tensors else EMBED  # tied: the embedding is the head
    for name in (EMBED, LM_HEAD):
        if name in tensors and tensors[name].shape[1] % block_size == 0:
            if gram is not None and name == head:
                tensors[name] = head_gptq(tensors[name].to(device), gram, block_size, damp).cpu().contiguous()
            else:
                tensors[name] = ort_int4_fake_quant(tensors[name], block_size).contiguous()
    save_file(tensors, path, metadata={"format": "pt"})
