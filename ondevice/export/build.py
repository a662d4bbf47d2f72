"""The optimize step: quantized checkpoint -> int4 ONNX for onnxruntime-genai; adapters -> .onnx_adapter.

Olive 0.13's ModelBuilder pass cannot drive onnxruntime-genai >= 0.16 (the module it imports moved),
so we call the 0.18 builder's Python API directly. The builder reads Olive's `olive` checkpoint
format natively and repacks its int4 weights without re-rounding. Then the LoRA inputs are added
(ondevice.export.onnx_lora), which is what Olive's ExtractAdapters does for models built with LoRA
weights, but with a cheaper graph and defaults that let the model run without an adapter.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import onnx

from ondevice.checkpoint import quantization_config
from ondevice.export import onnx_lora
from ondevice.export.builder import run_builder, use_cuda_graph
from ondevice.tokenizer import copy_tokenizer

# HF checkpoints that fuse projections (Phi-3): fused name -> its parts, in row order.
FUSED_IN_CHECKPOINT = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                       "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def builder_checkpoint(quantized_dir: Path, work: Path) -> Path:
    """The checkpoint as onnxruntime-genai 0.18's builder can read it, bit for bit the same weights;
    the quantized folder itself where it needs nothing. Two gaps of its Olive-format loader:

    - Fused int4 projections (Phi-3's qkv_proj, gate_up_proj): it splits their packed zero points at
      out_features // 2 rows, as if they were packed along the rows (they are packed along the
      groups), so MatMulNBits refuses the model at load time. Rows of qweight, scales, qzeros and
      bias all split at the same boundaries, so we split them here; the builder fuses q/k/v again.
    - Symmetric checkpoints (quantize.symmetric) store no zero points, and the builder fuses q, k and
      v by concatenating theirs (a TypeError on None). Those three get the mid-grid zero points that
      MatMulNBits assumes where there are none (8 of 16; 128 of 256 for an 8-bit override).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    qc = quantization_config(quantized_dir)
    with safe_open(quantized_dir / "model.safetensors", "pt") as f:  # the names only: most models need nothing
        names = list(f.keys())
    fused = any(f".{part}." in name for name in names for part in FUSED_IN_CHECKPOINT)
    if not fused and not qc.get("symmetric"):
        return quantized_dir
    tensors = load_file(quantized_dir / "model.safetensors")
    folder = work / "builder_input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for item in quantized_dir.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            shutil.copy2(item, folder / item.name)
    hf = json.loads((folder / "config.json").read_text())
    overrides = hf["quantization_config"].get("overrides") or {}
    if fused:
        tensors = _split_fused(tensors, quantized_dir, overrides)
    if qc.get("symmetric"):
        _add_mid_grid_zero_points(tensors, qc["bits"], overrides)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    return folder


def _split_fused(tensors: dict, quantized_dir: Path, overrides: dict) -> dict:
    """Fused projections' rows split into their parts; a fused projection's 8-bit override
    (quantize.int8_modules) now belongs to each part (`overrides` is edited in place)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(quantized_dir)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    rows = {"self_attn.qkv_proj": (q, kv, kv), "mlp.gate_up_proj": (config.intermediate_size,) * 2}
    out = {}
    for name, t in tensors.items():
        fused = next((f for f in FUSED_IN_CHECKPOINT if f".{f}." in name), None)
        if fused is None:
            out[name] = t
            continue
        for part, piece in zip(FUSED_IN_CHECKPOINT[fused], t.split(rows[fused], dim=0), strict=False):
            out[name.replace(fused, part)] = piece.contiguous()
    for name in list(overrides):
        fused = next((f for f in FUSED_IN_CHECKPOINT if name.endswith(f".{f}")), None)
        if fused:
            for part in FUSED_IN_CHECKPOINT[fused]:
                overrides[name[: -len(fused)] + part] = overrides[name]
            del overrides[name]
    return out


def _add_mid_grid_zero_points(tensors: dict, bits: int, overrides: dict) -> None:
    import torch

    for name in [n for n in tensors if n.endswith(("self_attn.q_proj.qweight", "self_attn.k_proj.qweight",
                                                    "self_attn.v_proj.qweight"))]:
        module = name.removesuffix(".qweight")
        if f"{module}.qzeros" in tensors:
            continue
        out, groups = tensors[f"{module}.scales"].shape
        if overrides.get(module, {}).get("bits", bits) == 8:  # one zero point a byte
            tensors[f"{module}.qzeros"] = torch.full((out, groups), 128, dtype=torch.uint8)
        else:  # two 4-bit zero points a byte, packed along the groups
            tensors[f"{module}.qzeros"] = torch.full((out, (groups + 1) // 2), 0x88, dtype=torch.uint8)


def head_block(quantized_dir: Path) -> int:
    """The int4 block the quantize stage rounded the float head on: the builder must quantize it the same."""
    qc = quantization_config(quantized_dir)
    if "head_block_size" not in qc:
        from ondevice.atomic import UserError

        raise UserError(f"{quantized_dir} has no quantization_config.head_block_size (made before it was recorded); "
                        "run `dvc repro quantize`")
    return qc["head_block_size"]


def build_onnx(quantized_dir: Path, out_dir: Path, o: dict, cache_dir: Path) -> float:
    """Run the onnxruntime-genai model builder on the quantized checkpoint; returns seconds.
    The head is packed on the int4 block the checkpoint records (quantize rounded it on that block)."""
    # is_symmetric stays at the builder's default (true): it only concerns the head (the layers
    # arrive quantized), and the builder's asymmetric path leaves the tied embedding in fp32.
    level = 4 if o["int4_accuracy_level"] == "auto" else o["int4_accuracy_level"]  # auto: 4 until chosen
    extra = [f"block_size={head_block(quantized_dir)}", f"accuracy_level={level}"]
    if o["prune_lm_head"]:  # prefill computes the last position's logits only
        extra.append("prune_lm_head=true")
    checkpoint = builder_checkpoint(quantized_dir, cache_dir.parent)
    t0 = time.perf_counter()
    run_builder(checkpoint, out_dir, "int4", o["provider"], cache_dir, extra)
    # The builder re-saves the tokenizer through transformers; ours is the normalised one.
    copy_tokenizer(quantized_dir, out_dir)
    # The HF config travels with the model: the adapter step reads the projection sizes from it.
    shutil.copy2(quantized_dir / "config.json", out_dir / "config.json")
    # LoRA defaults are overridable initializers by design: keep onnxruntime's warning about them quiet.
    config_path = out_dir / "genai_config.json"
    genai = json.loads(config_path.read_text())
    session = genai["model"]["decoder"]["session_options"]
    session["log_severity_level"] = 3
    # What the seed's client gets without options of its own. Unset, onnxruntime-genai picks
    # logical CPUs / 2 (one thread on a 2-vCPU box: 206 tok/s there against 276 with two); 0 hands
    # the choice to onnxruntime on the machine that runs it: one thread per physical core.
    session["intra_op_num_threads"] = o["intra_op_threads"]
    config_path.write_text(json.dumps(genai, indent=4))
    if o["cuda_graph"]:
        use_cuda_graph(out_dir)
    return time.perf_counter() - t0


def add_adapter_inputs(onnx_dir: Path, target_modules: list[str]) -> list[onnx_lora.Target]:
    path = onnx_dir / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    targets = onnx_lora.add_lora_inputs(model, target_modules)
    # The builder stamps `git rev-parse HEAD` of wherever it runs from: every commit would change
    # model.onnx (and rerun everything after optimize). Stamp the builder's version instead.
    from onnxruntime_genai import __version__ as genai_version

    model.producer_version = genai_version
    onnx.save(model, str(path))  # external weights stay in model.onnx.data, referenced by name
    return targets


def optimize(quantized_dir: Path, out_dir: Path, o: dict, work: Path) -> dict:
    """The base model, with LoRA inputs (zero-size defaults) on every projection in `lora_targets`
    (int4_accuracy_level auto: built at 4; onnx_scoring.ship_accuracy_level chooses)."""
    seconds = build_onnx(quantized_dir, out_dir, o, work / "builder_cache")
    shutil.rmtree(work / "builder_cache", ignore_errors=True)
    shutil.rmtree(work / "builder_input", ignore_errors=True)
    targets = add_adapter_inputs(out_dir, list(o["lora_targets"]))
    return {
        "build_seconds": round(seconds, 2),
        "model_mb": round(sum(p.stat().st_size for p in out_dir.glob("model.onnx*")) / 1e6, 2),
        "lora_nodes": len(targets),
    }


def run(quantized: Path, examples: list[dict] | None, out_dir: Path, cfg) -> dict:
    """The optimize stage: the checkpoint in `quantized` built as cfg (a params.Optimize) says into the
    empty folder out_dir, then its accuracy level chosen (auto, on the encoded eval `examples` that
    accuracy_level.auto_examples gives) or set; returns its metrics."""
    import tempfile

    from ondevice import threads
    from ondevice.export.accuracy_level import ship_accuracy_level

    with tempfile.TemporaryDirectory() as work:  # the builder's cache and unfused input
        result = optimize(quantized, out_dir, cfg, Path(work))
    result["accuracy_level"] = ship_accuracy_level(out_dir, cfg, examples, threads.count())
    return result
