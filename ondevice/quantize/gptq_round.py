"""GPTQ rounding on a fixed grid (Frantar et al., arXiv 2210.17323), AWQ's last step when
`quantize.awq_gptq` is on: the grid (scales, zero points) is AWQ's, only the rounding changes."""
from __future__ import annotations

import torch
from olive.common.quant.utils import WeightQuantizer

GPTQ_BLOCK = 128  # columns per lazy-batch update (the paper's B): speed only, same result


@torch.no_grad()
def gptq_round(w: torch.Tensor, gram: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
               quantizer: WeightQuantizer, damp: float, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """GPTQ (Frantar et al., arXiv 2210.17323) on a fixed grid: round one input column at a time
    and spread its rounding error over the columns not yet rounded, weighted by the inverse of the
    input's Gram matrix, so the layer's output error (not each weight's) is what gets minimised.
    The scales and zero points are AWQ's, so the result is on the grid Olive packs: dequantized
    values that its packing rounds back to the same integers. `fixed` (bool, w's shape) marks
    weights kept at their round-to-nearest code (a block's extreme, which fixes a re-derived grid)."""
    out_f, in_f = w.shape
    gs = quantizer.group_size
    h = gram.clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += damp * torch.diag(h).mean() * torch.eye(in_f, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    w = w.clone().double()
    s, z = scales.double().reshape(out_f, -1), zero_points.double().reshape(out_f, -1)
    out = torch.empty_like(w)
    if fixed is not None:
        nearest = torch.clamp(torch.round(w / s.repeat_interleave(gs, 1)) + z.repeat_interleave(gs, 1),
                              quantizer.minq, quantizer.maxq)
    for b0 in range(0, in_f, GPTQ_BLOCK):  # columns in blocks: the update of the columns after a
        b1 = min(b0 + GPTQ_BLOCK, in_f)     # block is one matmul, not one pass per column
        errs = torch.empty(out_f, b1 - b0, dtype=w.dtype, device=w.device)
        for j in range(b0, b1):
            g = j // gs
            q = torch.clamp(torch.round(w[:, j] / s[:, g]) + z[:, g], quantizer.minq, quantizer.maxq)
            if fixed is not None:
                q = torch.where(fixed[:, j], nearest[:, j], q)
            out[:, j] = (q - z[:, g]) * s[:, g]
            errs[:, j - b0] = (w[:, j] - out[:, j]) / hinv[j, j]
            w[:, j + 1:b1] -= errs[:, j - b0, None] * hinv[j, j + 1:b1][None, :]
        w[:, b1:] -= errs @ hinv[b0:b1, b1:]
    return out.float()
