"""The one reader of the quantized checkpoint, and device choice: no AWQ/GPTQ code, so edits rerun only its stages."""
from __future__ import annotations

from pathlib import Path

import torch


def quantization_config(folder: str | Path) -> dict:
    """The checkpoint's quantization_config (bits, group size, algorithm, head block, 8-bit overrides)."""
    import json

    return json.loads((Path(folder) / "config.json").read_text()).get("quantization_config") or {}


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from ondevice.atomic import UserError

        raise UserError("device=cuda but torch sees no CUDA GPU; set device: auto or cpu")
    return device


@torch.no_grad()
def load_dequantized(folder: str | Path, dtype=torch.float32, device: str = "cpu"):
    """The quantized checkpoint as a plain float model whose weights are exactly dequant(q).

    peft cannot wrap Olive's QuantLinear, so training uses this view: the frozen base weights are
    the same numbers the int4 ONNX model multiplies with. Unpacked and dequantized on `device`, in
    a model built there without random initialisation (every weight is then loaded, checked below):
    for a 3.8 B model on a GPU that is seconds instead of a minute of CPU work.
    """
    from olive.common.quant.utils import WeightQuantizer, unpack_from_uint8
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    qc = config.quantization_config
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    delattr(config, "quantization_config")
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file, device=device))
    state = {}
    for name, t in tensors.items():
        if name.endswith(".qweight"):
            base = name[: -len(".qweight")]
            over = (qc.get("overrides") or {}).get(base, {}) or {}
            bits, gs = over.get("bits", qc["bits"]), over.get("group_size", qc["group_size"])
            sym = over.get("symmetric", qc["symmetric"])
            scales = tensors[base + ".scales"]
            rows, groups = scales.shape
            cols = t.shape[1] * 8 // bits
            q = unpack_from_uint8(t, bits, (rows, cols))
            quantizer = WeightQuantizer(bits=bits, symmetric=sym, group_size=gs)
            if base + ".qzeros" in tensors:
                zp = unpack_from_uint8(tensors[base + ".qzeros"], bits, (rows, groups))
            else:
                zp = torch.full((rows, groups), quantizer.midq, dtype=torch.int32, device=device)
            state[base + ".weight"] = quantizer.dequantize(q, scales.float(), zp).to(dtype)
        elif name.endswith((".scales", ".qzeros")):
            continue
        else:
            state[name] = t.to(dtype) if t.is_floating_point() else t
    with torch.device(device), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    return model
