"""GPTQ rounding on a fixed grid (Frantar et al., arXiv 2210.17323), AWQ's last step when
`quantize.awq_gptq` is on: the grid (scales, zero points) is AWQ's, only the rounding changes."""
from __future__ import annotations

import torch
from olive.common.quant.utils import WeightQuantizer

GPTQ_BLOCK = 128  # columns per lazy-batch update (the paper's B): speed only, same result


def round_block(w, out, errs, s, z, hinv, nearest, fixed, minq: int, maxq: int) -> None:
    """Round one block's columns in turn (all arguments [rows, block] but hinv, the block's [block,
    block] corner): each column's error, weighted by the inverse Gram, goes to the columns after it.
    About a dozen kernels a column: on a GPU their launches, not their arithmetic, are the cost."""
    for j in range(w.shape[1]):
        q = torch.clamp(torch.round(w[:, j] / s[:, j]) + z[:, j], minq, maxq)
        if fixed is not None:
            q = torch.where(fixed[:, j], nearest[:, j], q)
        out[:, j] = (q - z[:, j]) * s[:, j]
        errs[:, j] = (w[:, j] - out[:, j]) / hinv[j, j]
        w[:, j + 1:] -= errs[:, j, None] * hinv[j, j + 1:][None, :]


class GraphedBlock:
    """round_block captured once as a CUDA graph over static [rows, GPTQ_BLOCK] buffers and replayed
    for every full block: one launch instead of ~1,500 (Phi-3.5's layers: 17,408 columns each)."""

    def __init__(self, rows: int, device, with_fixed: bool, minq: int, maxq: int):
        make = lambda dtype=torch.float64: torch.zeros(rows, GPTQ_BLOCK, dtype=dtype, device=device)  # noqa: E731
        self.w, self.out, self.errs, self.s, self.z = make(), make(), make(), make(), make()
        self.nearest, self.fixed = (make(), make(torch.bool)) if with_fixed else (None, None)
        self.s.fill_(1.0)
        self.hinv = torch.eye(GPTQ_BLOCK, dtype=torch.float64, device=device)
        args = (self.w, self.out, self.errs, self.s, self.z, self.hinv, self.nearest, self.fixed, minq, maxq)
        side = torch.cuda.Stream(device)  # warm-up off the capturing stream, as torch.cuda.graphs asks
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            round_block(*args)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            round_block(*args)

    def __call__(self, w, out, errs, s, z, hinv, nearest, fixed) -> None:
        for static, value in ((self.w, w), (self.s, s), (self.z, z), (self.hinv, hinv),
                              (self.nearest, nearest), (self.fixed, fixed)):
            if static is not None:
                static.copy_(value)
        self.graph.replay()
        out.copy_(self.out)
        errs.copy_(self.errs)
        w.copy_(self.w)


_GRAPHS: dict[tuple, GraphedBlock] = {}  # one capture per shape: a capture costs ~75 ms, a replay ~1 ms


def graphed_block(rows: int, device, with_fixed: bool, minq: int, maxq: int) -> GraphedBlock:
    key = (rows, str(device), with_fixed, minq, maxq)
    if key not in _GRAPHS:
        _GRAPHS[key] = GraphedBlock(rows, device, with_fixed, minq, maxq)
    return _GRAPHS[key]


@torch.no_grad()
def gptq_round(w: torch.Tensor, gram: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
               quantizer: WeightQuantizer, damp: float, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """GPTQ (Frantar et al., arXiv 2210.17323) on a fixed grid: round one input column at a time
    and spread its rounding error over the columns not yet rounded, weighted by the inverse of the
    input's Gram matrix, so the layer's output error (not each weight's) is what gets minimised.
    The scales and zero points are AWQ's, so the result is on the grid Olive packs: dequantized
    values that its packing rounds back to the same integers. `fixed` (bool, w's shape) marks
    weights kept at their round-to-nearest code (a block's extreme, which fixes a re-derived grid).
    On a GPU each full block replays one CUDA graph (the same kernels: the same result)."""
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
    nearest = None
    if fixed is not None:
        nearest = torch.clamp(torch.round(w / s.repeat_interleave(gs, 1)) + z.repeat_interleave(gs, 1),
                              quantizer.minq, quantizer.maxq)
    graphed = (graphed_block(out_f, w.device, fixed is not None, quantizer.minq, quantizer.maxq)
               if w.is_cuda and in_f >= 2 * GPTQ_BLOCK else None)
    for b0 in range(0, in_f, GPTQ_BLOCK):  # columns in blocks: the update of the columns after a
        b1 = min(b0 + GPTQ_BLOCK, in_f)     # block is one matmul, not one pass per column
        groups = torch.arange(b0, b1, device=w.device) // gs  # each column's group: its scale and zero point
        errs = torch.empty(out_f, b1 - b0, dtype=w.dtype, device=w.device)
        block = (w[:, b0:b1], out[:, b0:b1], errs, s[:, groups], z[:, groups], hinv[b0:b1, b0:b1],
                 None if fixed is None else nearest[:, b0:b1], None if fixed is None else fixed[:, b0:b1])
        if graphed is not None and b1 - b0 == GPTQ_BLOCK:
            graphed(*block)
        else:
            round_block(*block, quantizer.minq, quantizer.maxq)
        w[:, b1:] -= errs @ hinv[b0:b1, b1:]
    return out.float()
