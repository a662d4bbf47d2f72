"""Read the int4 weights back out of a built ONNX model (test helper)."""
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 rows -> codes: two 4-bit codes per byte (low nibble first), or one 8-bit code."""
    if bits == 8:
        return packed
    return np.stack([packed & 15, packed >> 4], -1).reshape(packed.shape[0], -1)


def node_bits(model_dir: Path) -> dict[str, int]:
    """{node name: bits} for every MatMulNBits node."""
    model = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=False)
    return {n.name: next((a.i for a in n.attribute if a.name == "bits"), 4)
            for n in model.graph.node if n.op_type == "MatMulNBits"}


def dequantize_matmulnbits(model_dir: Path) -> dict[str, np.ndarray]:
    """{node name: dequantized weight [N, K]} for every MatMulNBits node (4 or 8 bits)."""
    model = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=True,
                      )
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        n, k, bs, bits = a["N"], a["K"], a["block_size"], a.get("bits", 4)
        blocks = (k + bs - 1) // bs
        packed = numpy_helper.to_array(inits[node.input[1]]).reshape(n, -1)
        q = unpack(packed, bits)[:, : blocks * bs].astype(np.float32)
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, blocks).astype(np.float32)
        if len(node.input) > 3 and node.input[3]:
            zp = unpack(numpy_helper.to_array(inits[node.input[3]]).reshape(n, -1), bits)[:, :blocks].astype(np.float32)
        else:
            zp = np.full((n, blocks), 2.0 ** (bits - 1), np.float32)
        w = (q.reshape(n, blocks, bs) - zp[:, :, None]) * scales[:, :, None]
        out[node.name] = w.reshape(n, blocks * bs)[:, :k]
    return out
