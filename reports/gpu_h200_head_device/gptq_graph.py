"""#28: GPTQ's column loop on the GPU, one kernel launch at a time (how quantize ran it) against one
CUDA graph replayed per 128-column block (`ondevice.quantize.gptq_round.GraphedBlock`, captured once
per shape), on the four projections of one Phi-3.5-mini layer (float64, group 32, asymmetric, damp
0.1, a Gram matrix of 4,864 tokens).

Run on the device: python reports/gpu_h200_head_device/gptq_graph.py > $OUT/gptq_graph.json
"""
import json
import time

import torch
from olive.common.quant.utils import WeightQuantizer

from ondevice.quantize import gptq_round as G

SHAPES = {"qkv_proj": (9216, 3072), "o_proj": (3072, 3072), "gate_up_proj": (16384, 3072), "down_proj": (3072, 8192)}
GRAPHED = G.graphed_block


def timed(graphs: bool, *args):
    G.graphed_block = GRAPHED if graphs else (lambda *a: None)  # None: every block through the eager loop
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = G.gptq_round(*args)
    torch.cuda.synchronize()
    return out, round(time.perf_counter() - t, 3)


torch.manual_seed(0)
quantizer = WeightQuantizer(bits=4, symmetric=False, group_size=32)
result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "projections": {}}
for name, (rows, cols) in SHAPES.items():
    w = torch.randn(rows, cols, device="cuda") * 0.02
    x = torch.randn(4864, cols, device="cuda")
    lo, hi = w.reshape(rows, -1, 32).amin(-1), w.reshape(rows, -1, 32).amax(-1)
    scales = (hi - lo) / 15
    zero_points = torch.round(-lo / scales).clamp(0, 15).to(torch.int32)
    args = (w, x.T @ x / x.shape[0], scales, zero_points, quantizer, 0.1)
    if name == "qkv_proj":
        timed(True, *args), timed(False, *args)  # CUDA, cuBLAS and the capture path loaded before the clock
    eager, eager_s = timed(False, *args)
    graphed, graphed_s = timed(True, *args)
    result["projections"][name] = {"shape": [rows, cols], "eager_s": eager_s, "graphed_s": graphed_s,
                                   "bit_equal": torch.equal(eager, graphed)}
p = result["projections"].values()
result["per_layer_eager_s"] = round(sum(r["eager_s"] for r in p), 2)
result["per_layer_graphed_s"] = round(sum(r["graphed_s"] for r in p), 2)
result["32_layers_eager_s"] = round(32 * result["per_layer_eager_s"], 1)
result["32_layers_graphed_s"] = round(32 * result["per_layer_graphed_s"], 1)
print(json.dumps(result, indent=1))
