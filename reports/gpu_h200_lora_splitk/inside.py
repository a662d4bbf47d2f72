"""Issue #28's third path: the adapters' weights inside the model, chosen by a small input, against the
shipped graph inputs. The same 32 branches at Phi-3.5-mini's qkv_proj shape (x [1, 3072] fp16, r 64, out 9216)
under one CUDA graph, clocked as ../gpu_h200_lora_kernels/micro.py clocks its layouts:
  inputs:        A, B fed as graph inputs, resident on the device (what 0.15.2 serves; the shipped layout)
  inside:        one adapter's A, B as initializers, no choice at all (the floor of any inside layout)
  inside_scale:  the same, switched on or off by a scalar input that scales x A (one more small kernel)
  inside_gather: two adapters' A, B stacked as initializers, one chosen by an index input (Gather)
usage: inside.py [REPEATS]   (one JSON line per layout and repeat)"""
import json
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu_h200_lora_kernels"))
from micro import clock_graph  # noqa: E402  the same clock as micro.py's layouts

K, R, N, L = 3072, 64, 9216, 32
LAYOUTS = ["inputs", "inside", "inside_scale", "inside_gather"]


def weights(i: int, adapter: int = 0):
    rng = np.random.default_rng(1000 * adapter + i)
    return ((rng.standard_normal((K, R)) / K ** 0.5).astype(np.float16),
            (rng.standard_normal((R, N)) * 0.02).astype(np.float16))


def model_and_feed(layout: str):
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((1, K)).astype(np.float16), "y0": np.zeros((1, N), np.float16)}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, K]),
              helper.make_tensor_value_info("y0", TensorProto.FLOAT16, [1, N])]
    nodes, inits, y = [], [], "y0"
    if layout == "inside_scale":
        inputs.append(helper.make_tensor_value_info("on", TensorProto.FLOAT16, [1]))
        feed["on"] = np.ones(1, np.float16)
    if layout == "inside_gather":
        inputs.append(helper.make_tensor_value_info("which", TensorProto.INT64, []))
        feed["which"] = np.array(0, np.int64)
    for i in range(L):
        a, b, out = f"A{i}", f"B{i}", f"y{i + 1}"
        if layout == "inputs":
            feed[a], feed[b] = weights(i)
            inputs += [helper.make_tensor_value_info(a, TensorProto.FLOAT16, [K, R]),
                       helper.make_tensor_value_info(b, TensorProto.FLOAT16, [R, N])]
        elif layout == "inside_gather":
            pairs = [weights(i, adapter) for adapter in (0, 1)]
            inits += [numpy_helper.from_array(np.stack([p[0] for p in pairs]), f"As{i}"),
                      numpy_helper.from_array(np.stack([p[1] for p in pairs]), f"Bs{i}")]
            nodes += [helper.make_node("Gather", [f"As{i}", "which"], [a]),
                      helper.make_node("Gather", [f"Bs{i}", "which"], [b])]
        else:
            inits += [numpy_helper.from_array(w, name) for w, name in zip(weights(i), (a, b), strict=True)]
        nodes.append(helper.make_node("MatMul", ["x", a], [f"xa{i}"]))
        xa = f"xa{i}"
        if layout == "inside_scale":
            nodes.append(helper.make_node("Mul", [xa, "on"], [f"xas{i}"]))
            xa = f"xas{i}"
        nodes += [helper.make_node("MatMul", [xa, b], [f"d{i}"]), helper.make_node("Add", [y, f"d{i}"], [out])]
        y = out
    g = helper.make_graph(nodes, layout, inputs, [helper.make_tensor_value_info(y, TensorProto.FLOAT16, [1, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), feed


if __name__ == "__main__":
    # repeats interleave the layouts: the card's clocks drift
    for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for layout in LAYOUTS:
            us, y = clock_graph(*model_and_feed(layout))
            if layout == "inputs":
                ref = y
            print(json.dumps({"rep": rep, "layout": layout, "us_per_run_32_branches": us,
                              "max_abs_diff_vs_inputs": float(np.abs(y - ref).max())}), flush=True)
