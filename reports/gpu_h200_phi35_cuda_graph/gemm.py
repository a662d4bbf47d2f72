"""Each LoRA branch in two kernels instead of three: Gemm(x A, B, y) adds the base output inside cuBLAS
(beta = 1) where MatMul_B then Add launched twice. Gemm is 2-D, so the branch works on [tokens, features]
views (Reshape to a static last dim; on CUDA a Reshape aliases its input, no copy).
usage: gemm.py SRC_DIR DST_DIR (other files copied)."""
import shutil, sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
m = onnx.load(str(src / "model.onnx"), load_external_data=False)
g = m.graph
dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
by_name = {n.name: n for n in g.node}
out, shapes, fused = [], set(), 0
for n in g.node:
    if n.name.endswith("/lora/MatMul_A") or n.name.endswith("/lora/MatMul_B"):
        continue  # rebuilt below, at the branch's Add
    if not n.name.endswith("/lora/Add"):
        out.append(n)
        continue
    base = n.name[: -len("/Add")]
    x, a = by_name[f"{base}/MatMul_A"].input
    b = by_name[f"{base}/MatMul_B"].input[1]
    k, nout = dims[a][0], dims[b][1]
    shapes |= {k, nout}
    y = n.input[0]
    out += [helper.make_node("Reshape", [x, f"lora_rows_{k}"], [f"{base}/x_2d"], name=f"{base}/Reshape_x"),
            helper.make_node("MatMul", [f"{base}/x_2d", a], [f"{base}/xa"], name=f"{base}/MatMul_A"),
            helper.make_node("Reshape", [y, f"lora_rows_{nout}"], [f"{base}/y_2d"], name=f"{base}/Reshape_y"),
            helper.make_node("Gemm", [f"{base}/xa", b, f"{base}/y_2d"], [f"{base}/sum_2d"], name=f"{base}/Gemm"),
            helper.make_node("Shape", [y], [f"{base}/y_shape"], name=f"{base}/Shape_y"),
            helper.make_node("Reshape", [f"{base}/sum_2d", f"{base}/y_shape"], list(n.output), name=f"{base}/Reshape_out")]
    fused += 1
for s in shapes:
    g.initializer.append(numpy_helper.from_array(np.array([-1, s], np.int64), f"lora_rows_{s}"))
del g.node[:]
g.node.extend(out)
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.name != "model.onnx":
        shutil.copy2(f, dst / f.name)
onnx.save(m, str(dst / "model.onnx"))
print("fused", fused, "LoRA branches into MatMul + Gemm")
