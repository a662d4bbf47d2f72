"""Read the int4 weights back out of a built ONNX model (test helper)."""
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def dequantize_matmulnbits(model_dir: Path) -> dict[str, np.ndarray]:
    """{node name: dequantized weight [N, K]} for every MatMulNBits node."""
    model = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=True,
                      )
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        n, k, bs = a["N"], a["K"], a["block_size"]
        blocks = (k + bs - 1) // bs
        packed = numpy_helper.to_array(inits[node.input[1]]).reshape(n, -1)
        q = np.stack([packed & 15, packed >> 4], -1).reshape(n, -1)[:, : blocks * bs].astype(np.float32)
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, blocks).astype(np.float32)
        if len(node.input) > 3 and node.input[3]:
            zp_packed = numpy_helper.to_array(inits[node.input[3]]).reshape(n, -1)
            zp = np.stack([zp_packed & 15, zp_packed >> 4], -1).reshape(n, -1)[:, :blocks].astype(np.float32)
        else:
            zp = np.full((n, blocks), 8.0, np.float32)
        w = (q.reshape(n, blocks, bs) - zp[:, :, None]) * scales[:, :, None]
        out[node.name] = w.reshape(n, blocks * bs)[:, :k]
    return out
