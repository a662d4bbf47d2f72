"""The optimize step: quantized checkpoint -> int4 ONNX for onnxruntime-genai + .onnx_adapter.

Olive 0.13's ModelBuilder pass cannot drive onnxruntime-genai >= 0.16 (the module it imports moved),
so we call the 0.18 builder's Python API directly. The builder reads Olive's `olive` checkpoint
format natively and repacks its int4 weights without re-rounding. Then the LoRA inputs are added
(ondevice.onnx_lora), which is what Olive's ExtractAdapters does for models built with LoRA
weights, but with a cheaper graph and defaults that let the model run without an adapter.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import onnx

from ondevice import onnx_lora
from ondevice.model_source import copy_tokenizer


def build_onnx(quantized_dir: Path, out_dir: Path, o: dict, cache_dir: Path) -> float:
    """Run the onnxruntime-genai model builder; returns seconds."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    # is_symmetric stays at the builder's default (true): it only concerns the head (the layers
    # arrive quantized), and the builder's asymmetric path leaves the tied embedding in fp32.
    extra = [f"block_size={o['int4_block_size']}", f"accuracy_level={o['int4_accuracy_level']}"]
    t0 = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # the builder prints a line per layer
        options = parse_extra_options(None, str(quantized_dir), str(out_dir), o["precision"], o["provider"],
                                      str(cache_dir), extra)
        create_model(None, str(quantized_dir), str(out_dir), o["precision"], o["provider"], str(cache_dir), **options)
    # The builder re-saves the tokenizer through transformers; ours is the normalised one.
    copy_tokenizer(quantized_dir, out_dir)
    # LoRA defaults are overridable initializers by design: keep onnxruntime's warning about them quiet.
    config_path = out_dir / "genai_config.json"
    genai = json.loads(config_path.read_text())
    genai["model"]["decoder"]["session_options"]["log_severity_level"] = 3
    config_path.write_text(json.dumps(genai, indent=4))
    return time.perf_counter() - t0


def add_adapter_inputs(onnx_dir: Path, target_modules: list[str]) -> list[onnx_lora.Target]:
    path = onnx_dir / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    targets = onnx_lora.add_lora_inputs(model, target_modules)
    onnx.save(model, str(path))  # external weights stay in model.onnx.data, referenced by name
    return targets


def export_adapter(adapter_dir: Path, onnx_dir: Path, targets, hf_config, path: Path) -> dict:
    """peft adapter folder -> .onnx_adapter whose names and shapes match the model's inputs."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    state = load_file(adapter_dir / "adapter_model.safetensors")
    scale = cfg["lora_alpha"] / cfg["r"]
    dtype = onnx_lora.lora_dtype(onnx_dir / "model.onnx")
    arrays = onnx_lora.adapter_arrays(state, scale, targets, hf_config, dtype=dtype)
    onnx_lora.check_adapter_matches(onnx_dir / "model.onnx", arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_lora.write_adapter(path, arrays)
    return {"rank": cfg["r"], "alpha": cfg["lora_alpha"], "target_modules": sorted(cfg["target_modules"]),
            "parameters": int(sum(a.size for a in arrays.values()))}


def optimize(quantized_dir: Path, adapter_dir: Path, out_dir: Path, o: dict, work: Path) -> dict:
    from transformers import AutoConfig

    seconds = build_onnx(quantized_dir, out_dir, o, work / "builder_cache")
    shutil.rmtree(work / "builder_cache", ignore_errors=True)
    peft_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    targets = add_adapter_inputs(out_dir, list(peft_cfg["target_modules"]))
    hf_config = AutoConfig.from_pretrained(quantized_dir)
    adapter_path = out_dir / "adapters" / f"{o['adapter_name']}.onnx_adapter"
    info = export_adapter(adapter_dir, out_dir, targets, hf_config, adapter_path)
    (out_dir / "adapters" / f"{o['adapter_name']}.json").write_text(json.dumps(info, indent=2))

    def size(p):
        return p.stat().st_size

    return {
        "build_seconds": round(seconds, 2),
        "model_mb": round(sum(size(p) for p in out_dir.glob("model.onnx*")) / 1e6, 2),
        "adapter_mb": round(size(adapter_path) / 1e6, 3),
        "lora_nodes": len(targets),
        "adapter_parameters": info["parameters"],
    }
