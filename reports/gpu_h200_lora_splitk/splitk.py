"""A LoRA branch's x A split over K in plain ONNX ops, against the shipped MatMul, MatMul, Add: a graph of
32 branches y += (x A) B at Phi-3.5-mini's qkv_proj shape (x [1, 3072] fp16, r 64, out 9216), under a CUDA
graph with device-resident inputs (io_binding), as ../gpu_h200_lora_kernels/micro.py clocks its layouts.
  splitS: A stored [S, K/S, r]; x viewed as [S, 1, K/S]; one batched MatMul gives S partial x A, a
          ReduceSum over S adds them; then MatMul B and Add as shipped. At M = 1 the shipped x A has 64
          outputs over 3,072 inputs, too little parallel work to hide memory latency: S-fold more here.
  splitS_mmsum: the same, the S parts added by a MatMul with ones [1, S] instead of ReduceSum.
usage: splitk.py [REPEATS]   (one JSON line per layout and repeat)"""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu_h200_lora_kernels"))
from micro import clock_graph  # noqa: E402  the same clock as micro.py's layouts

K, R, N, L = 3072, 64, 9216, 32
LAYOUTS = ["shipped", "split2", "split4", "split8", "split16", "split8_mmsum", "split16_mmsum", "none",
           "shipped_r0", "split8_r0", "split16_r0"]  # _r0: the zero-size defaults a base step feeds (no adapter active)


def split_of(layout):
    return int(layout.split("_")[0][5:]) if layout.startswith("split") else 1


def rank_of(layout):
    return 0 if layout.endswith("_r0") else R


def graph(layout: str) -> onnx.ModelProto:
    s, r, nodes, inits = split_of(layout), rank_of(layout), [], []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, K]),
              helper.make_tensor_value_info("y0", TensorProto.FLOAT16, [1, N])]
    if s > 1:
        inits += [numpy_helper.from_array(np.array([s, 1, K // s], np.int64), "xshape"),
                  numpy_helper.from_array(np.array([0], np.int64), "axis0"),
                  numpy_helper.from_array(np.array([1, r], np.int64), "xashape"),
                  numpy_helper.from_array(np.array([s, r], np.int64), "partshape"),
                  numpy_helper.from_array(np.ones((1, s), np.float16), "ones")]
    y = "y0"
    for i in range(L):
        a, b, out = f"A{i}", f"B{i}", f"y{i + 1}"
        inputs += [helper.make_tensor_value_info(a, TensorProto.FLOAT16, [s, K // s, r] if s > 1 else [K, r]),
                   helper.make_tensor_value_info(b, TensorProto.FLOAT16, [r, N])]
        if layout == "none":
            nodes.append(helper.make_node("Identity", [y], [out]))
            y = out
            continue
        if s == 1:
            nodes.append(helper.make_node("MatMul", ["x", a], [f"xa{i}"]))
        else:
            nodes += [helper.make_node("Reshape", ["x", "xshape"], [f"xs{i}"]),
                      helper.make_node("MatMul", [f"xs{i}", a], [f"parts{i}"])]  # [S, 1, r]
            if layout.endswith("_mmsum"):
                nodes += [helper.make_node("Reshape", [f"parts{i}", "partshape"], [f"p2{i}"]),
                          helper.make_node("MatMul", ["ones", f"p2{i}"], [f"xa{i}"])]
            else:
                nodes += [helper.make_node("ReduceSum", [f"parts{i}", "axis0"], [f"xsum{i}"], keepdims=0),
                          helper.make_node("Reshape", [f"xsum{i}", "xashape"], [f"xa{i}"])]
        nodes += [helper.make_node("MatMul", [f"xa{i}", b], [f"d{i}"]), helper.make_node("Add", [y, f"d{i}"], [out])]
        y = out
    g = helper.make_graph(nodes, layout, inputs, [helper.make_tensor_value_info(y, TensorProto.FLOAT16, [1, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def arrays(layout):
    s, r, rng = split_of(layout), rank_of(layout), np.random.default_rng(0)
    feed = {"x": rng.standard_normal((1, K)).astype(np.float16), "y0": np.zeros((1, N), np.float16)}
    for i in range(L):
        a = (rng.standard_normal((K, r)) / K ** 0.5).astype(np.float16)
        feed[f"A{i}"] = a.reshape(s, K // s, r) if s > 1 else a  # [K, r] -> [S, K/S, r]: rows k = s * K/S + j
        feed[f"B{i}"] = (rng.standard_normal((r, N)) * 0.02).astype(np.float16)
    return feed


def clock(layout, replays=2000):
    return clock_graph(graph(layout), arrays(layout), replays)


if __name__ == "__main__":
    # repeats interleave the layouts: the card's clocks drift
    for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for layout in LAYOUTS:
            us, y = clock(layout)
            if layout.startswith("shipped"):
                ref = y
            print(json.dumps({"rep": rep, "layout": layout, "us_per_run_32_branches": us,
                              "max_abs_diff_vs_shipped": None if layout == "none" else float(np.abs(y - ref).max()),
                              "max_abs_shipped": float(np.abs(ref).max())}), flush=True)
