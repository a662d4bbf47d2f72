"""Per-branch cost of a LoRA update's kernels on the CUDA EP, isolated from the model: a graph of 32
branches y += (x A) B at Phi-3.5-mini's qkv_proj shape (x [1, 3072] fp16, r 64, out 9216), each
layout below, run under a CUDA graph with device-resident inputs (io_binding), 2,000 replays.
usage: micro.py  (prints one JSON line per layout)"""
import json, sys, time
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K, R, N, L = 3072, 64, 9216, 32
LAYOUTS = {  # name -> (A stored transposed, B stored transposed, nodes of one branch)
    "mm_mm_add": (False, False),   # as shipped: MatMul(x, A), MatMul(xa, B), Add
    "mm_gemm": (False, False),     # MatMul(x, A), Gemm(xa, B, y)
    "at_mm_add": (True, False),    # Gemm(x, A^T, transB), MatMul(xa, B), Add
    "at_gemm": (True, False),      # Gemm(x, A^T, transB), Gemm(xa, B, y)
    "at_bt_gemm": (True, True),    # Gemm(x, A^T, transB), Gemm(xa, B^T, y, transB)
    "none": (False, False),        # no branch: the floor (y passed through)
}


def graph(layout: str) -> onnx.ModelProto:
    at, bt, nodes, inits = *LAYOUTS[layout], [], []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, K]),
              helper.make_tensor_value_info("y0", TensorProto.FLOAT16, [1, N])]
    y = "y0"
    for i in range(L):
        a, b = f"A{i}", f"B{i}"
        inputs += [helper.make_tensor_value_info(a, TensorProto.FLOAT16, [R, K] if at else [K, R]),
                   helper.make_tensor_value_info(b, TensorProto.FLOAT16, [N, R] if bt else [R, N])]
        out = f"y{i + 1}"
        if layout == "none":
            nodes.append(helper.make_node("Identity", [y], [out]))
        else:
            first = helper.make_node("Gemm", ["x", a], [f"xa{i}"], transB=1) if at else helper.make_node("MatMul", ["x", a], [f"xa{i}"])
            nodes.append(first)
            if layout.endswith("gemm"):
                nodes.append(helper.make_node("Gemm", [f"xa{i}", b, y], [out], transB=int(bt)))
            else:
                nodes += [helper.make_node("MatMul", [f"xa{i}", b], [f"d{i}"]), helper.make_node("Add", [y, f"d{i}"], [out])]
        y = out
    g = helper.make_graph(nodes, layout, inputs, [helper.make_tensor_value_info(y, TensorProto.FLOAT16, [1, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def arrays(layout):
    at, bt = LAYOUTS[layout]
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((1, K)).astype(np.float16), "y0": np.zeros((1, N), np.float16)}
    for i in range(L):
        a = (rng.standard_normal((K, R)) / K ** 0.5).astype(np.float16)
        b = (rng.standard_normal((R, N)) * 0.02).astype(np.float16)
        feed[f"A{i}"], feed[f"B{i}"] = (a.T.copy() if at else a), (b.T.copy() if bt else b)
    return feed


def clock(layout, replays=2000):
    return clock_graph(graph(layout), arrays(layout), replays)


def clock_graph(model, feed, replays=2000):
    """Best of 5 x `replays` runs of model under a CUDA graph, feed on the device: (us per run, output)."""
    so = ort.SessionOptions()
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
    binding = sess.io_binding()
    vals = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in feed.items()}
    for k, v in vals.items():
        binding.bind_ortvalue_input(k, v)
    out = ort.OrtValue.ortvalue_from_shape_and_type([1, 9216], np.float16, "cuda", 0)
    binding.bind_ortvalue_output(sess.get_outputs()[0].name, out)
    ro = ort.RunOptions()
    for _ in range(20):
        sess.run_with_iobinding(binding, ro)
    best = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(replays):
            sess.run_with_iobinding(binding, ro)
        binding.synchronize_outputs()
        best.append((time.perf_counter() - t0) / replays * 1e6)
    result = out.numpy().astype(np.float32)
    return round(min(best), 2), result


if __name__ == "__main__":
    ref = None
    for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):  # repeats: the card's clocks drift
        for layout in LAYOUTS:
            us, y = clock(layout)
            if layout == "mm_mm_add":
                ref = y
            err = None if layout == "none" else float(np.abs(y - ref).max())
            print(json.dumps({"rep": rep, "layout": layout, "us_per_run_32_branches": us,
                              "max_abs_diff_vs_shipped": err}), flush=True)
