"""A built model's LoRA branches (MatMul_A, MatMul_B, Add) as one LoraUpdate node of lora_op.cu, and its
genai_config.json pointing onnxruntime-genai at the library (session_options.custom_ops_library).
The adapters are unchanged: A [K, R] and B [R, N] as shipped.
usage: custom.py SRC_DIR DST_DIR LIBRARY.so   (other files copied)"""
import json
import shutil
import sys
from pathlib import Path

import onnx
from onnx import helper

src, dst, library = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
m = onnx.load(str(src / "model.onnx"), load_external_data=False)
g = m.graph
by_name = {n.name: n for n in g.node}
out, fused = [], 0
for n in g.node:
    if n.name.endswith("/lora/MatMul_A") or n.name.endswith("/lora/MatMul_B"):
        continue
    if not n.name.endswith("/lora/Add"):
        out.append(n)
        continue
    base = n.name[: -len("/Add")]
    x, a = by_name[f"{base}/MatMul_A"].input
    b = by_name[f"{base}/MatMul_B"].input[1]
    out.append(helper.make_node("LoraUpdate", [x, a, b, n.input[0]], [n.output[0], f"{base}/xa"],
                                name=f"{base}/LoraUpdate", domain="ondevice.lora"))
    fused += 1
del g.node[:]
g.node.extend(out)
m.opset_import.append(helper.make_opsetid("ondevice.lora", 1))
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.name != "model.onnx":
        shutil.copy2(f, dst / f.name)
onnx.save(m, str(dst / "model.onnx"))
cfg = json.loads((dst / "genai_config.json").read_text())
cfg["model"]["decoder"]["session_options"]["custom_ops_library"] = library
(dst / "genai_config.json").write_text(json.dumps(cfg, indent=4))
print("fused", fused, "LoRA branches into LoraUpdate")
