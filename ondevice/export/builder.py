"""The onnxruntime-genai 0.18 builder, called through its Python API, and the genai_config.json edits
made to what it writes (readable by the CUDA serving runtime; CUDA graphs). Optimize builds the
shipped model with it, the CUDA benchmark the builder's own reference build."""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import onnx


def builder_config_fixes(config) -> None:
    """Config fields the 0.18 builder reads in their transformers 4 form.

    Gemma 3 under transformers 5 keeps one RoPE entry per attention kind
    ({"full_attention": {...}, "sliding_attention": {...}}); the builder wants a flat
    rope_parameters, rope_theta for the global layers and rope_local_base_freq for the local ones.
    Its Phi-3 LongRoPE path reads the old key "type" where transformers 5 may write "rope_type".
    """
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope and "sliding_attention" in rope:
        config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        config.rope_theta = rope["full_attention"]["rope_theta"]
        config.rope_parameters = rope = dict(rope["full_attention"])
    if isinstance(rope, dict) and "rope_type" in rope and "type" not in rope:  # Phi-3 LongRoPE reads "type"
        rope["type"] = rope["rope_type"]


def run_builder(input_dir: Path, out_dir: Path, precision: str, provider: str, cache_dir: Path,
                extra: list[str]) -> float:
    """The onnxruntime-genai 0.18 builder's Python API, its config read the way it expects; seconds."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the builder prints a line per layer
        options = parse_extra_options(None, str(input_dir), str(out_dir), precision, provider, str(cache_dir), extra)
        builder_config_fixes(options["hf_details"]["hf_config"])
        create_model(None, str(input_dir), str(out_dir), precision, provider, str(cache_dir), **options)
    config_path = Path(out_dir) / "genai_config.json"
    genai = json.loads(config_path.read_text())
    portable(genai)
    config_path.write_text(json.dumps(genai, indent=4))
    return time.perf_counter() - t0


def drop_rope_switch(model_path: Path) -> int | None:
    """LongRoPE's cache switch replaced by its short branch, so that onnxruntime can capture decode.

    For Phi-3 LongRoPE the builder feeds every attention node's rotary cache through an `If` on
    "sequence length > original_max_position_embeddings": the short-factor cache below it, the
    long-factor cache above. onnxruntime's CUDA graphs cannot hold control flow, so the session
    refuses to capture. Below the threshold the `If` always takes its else branch, so the graph
    with that branch's constants in its place computes the same numbers; the caller caps the
    context at the short cache's rows, and a longer request is refused by onnxruntime-genai instead
    of silently using the wrong cache. Returns those rows, or None for a model without the switch.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    switch = next((n for n in model.graph.node if n.op_type == "If" and list(n.output) == ["cos_cache", "sin_cache"]),
                  None)
    if switch is None:
        return None
    short = next(a.g for a in switch.attribute if a.name == "else_branch")  # the condition is false below the threshold
    tensors = {}
    for node in short.node:
        if node.op_type != "Constant" or len(node.output) != 1:
            raise ValueError(f"{model_path}: LongRoPE switch's short branch is not two constants ({node.op_type})")
        tensors[node.output[0]] = onnx.helper.get_attribute_value(node.attribute[0])
    for name, branch_output in zip(switch.output, short.output, strict=True):
        tensor = onnx.TensorProto()
        tensor.CopyFrom(tensors[branch_output.name])
        tensor.name = name
        model.graph.initializer.append(tensor)
    condition = switch.input[0]
    model.graph.node.remove(switch)
    if not any(condition in n.input for n in model.graph.node):  # the length comparison fed only the switch
        model.graph.node.remove(next(n for n in model.graph.node if condition in n.output))
    onnx.save(model, str(model_path))  # external weights stay in model.onnx.data, referenced by name
    return int(tensors[short.output[0].name].dims[0])


def portable(genai: dict) -> None:
    """A genai_config.json that the CUDA serving runtime (onnxruntime-genai 0.15.2, see
    runtime.cuda_serving_path) parses too: it refuses keys it does not know, and the 0.18 builder
    writes decoder.sliding_window.cache_slack, which is 0, its default, in every build we make."""
    window = genai["model"]["decoder"].get("sliding_window") or {}
    if window.get("cache_slack", 0) == 0:
        window.pop("cache_slack", None)


def use_cuda_graph(model_dir: Path) -> None:
    """Decode replays one captured CUDA graph per token instead of launching one kernel per node
    (the shipped model and the builder's reference build alike)."""
    config_path = model_dir / "genai_config.json"
    genai = json.loads(config_path.read_text())
    if (rows := drop_rope_switch(model_dir / "model.onnx")) is not None:
        genai["model"]["context_length"] = min(genai["model"]["context_length"], rows)
        genai["search"]["max_length"] = min(genai["search"]["max_length"], rows)
    session = genai["model"]["decoder"]["session_options"]
    providers = session.setdefault("provider_options", [])
    cuda = next((p["cuda"] for p in providers if "cuda" in p), None)
    if cuda is None:
        providers.append({"cuda": (cuda := {})})
    cuda["enable_cuda_graph"] = "1"
    config_path.write_text(json.dumps(genai, indent=4))
