"""Pack a LoRA graph's per-layer adapter inputs (N layers x A, B) into two inputs, sliced per layer in the
graph (Gather on axis 0), and repack adapters to match: does the per-input cost go away?"""
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
adapters = sys.argv[3:]  # NAME=PATH (repacked to dst/NAME.onnx_adapter) or NAME=random:RANK
m = onnx.load(str(src / "model.onnx"), load_external_data=False)
g = m.graph
layer = lambda n: int(re.search(r"layers\.(\d+)\.", n).group(1))
A = sorted((i.name for i in g.input if i.name.endswith(".lora_A")), key=layer)
B = sorted((i.name for i in g.input if i.name.endswith(".lora_B")), key=layer)
assert len(A) == len(B) and [layer(n) for n in A] == [layer(n) for n in B]
shape = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in g.input}
d_in, d_out = shape[A[0]][0], shape[B[0]][1]
assert all(shape[n][0] == d_in for n in A) and all(shape[n][1] == d_out for n in B), "one shape per kind"
dtype = g.input[[i.name for i in g.input].index(A[0])].type.tensor_type.elem_type
L = len(A)
keep = [i for i in g.input if i.name not in set(A) | set(B)]
del g.input[:]
g.input.extend(keep)
g.input.extend([helper.make_tensor_value_info("lora_A_packed", dtype, [L, d_in, "lora_rank"]),
                helper.make_tensor_value_info("lora_B_packed", dtype, [L, "lora_rank", d_out])])
np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
inits = [t for t in g.initializer if t.name not in set(A) | set(B)]
del g.initializer[:]
g.initializer.extend(inits)
g.initializer.extend([numpy_helper.from_array(np.zeros((L, d_in, 0), np_dtype), "lora_A_packed"),
                      numpy_helper.from_array(np.zeros((L, 0, d_out), np_dtype), "lora_B_packed")])
gathers = []
for k, (a, b) in enumerate(zip(A, B)):
    g.initializer.append(numpy_helper.from_array(np.array(k, np.int64), f"lora_layer_{k}"))
    gathers += [helper.make_node("Gather", ["lora_A_packed", f"lora_layer_{k}"], [a], axis=0, name=f"lora_gather_A_{k}"),
                helper.make_node("Gather", ["lora_B_packed", f"lora_layer_{k}"], [b], axis=0, name=f"lora_gather_B_{k}")]
nodes = gathers + list(g.node)
del g.node[:]
g.node.extend(nodes)
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.name != "model.onnx":
        (dst / f.name).unlink(missing_ok=True)
        (dst / f.name).symlink_to(f.resolve())
onnx.save(m, str(dst / "model.onnx"))
rng = np.random.default_rng(0)
for spec in adapters:
    name, path = spec.split("=")
    if path.startswith("random:"):
        r = int(path.split(":")[1])
        a = (rng.standard_normal((L, d_in, r)) * 0.01).astype(np_dtype)
        b = (rng.standard_normal((L, r, d_out)) * 0.01).astype(np_dtype)
    else:
        p = ort.AdapterFormat.read_adapter(path).get_parameters()
        a = np.stack([p[n].numpy() for n in A]).astype(np_dtype)
        b = np.stack([p[n].numpy() for n in B]).astype(np_dtype)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({"lora_A_packed": ort.OrtValue.ortvalue_from_numpy(a),
                        "lora_B_packed": ort.OrtValue.ortvalue_from_numpy(b)})
    fmt.export_adapter(str(dst / f"{name}.onnx_adapter"))
    print(name, a.shape, b.shape, (a.nbytes + b.nbytes) / 1e6, "MB")
print("packed", L, "layers:", len(A) + len(B), "inputs ->", 2)
