"""LoRA as graph inputs of the int4 ONNX model, and adapters as `.onnx_adapter` files.

The builder fuses q/k/v into one MatMulNBits (and keeps gate/up/o/down separate). For every such
node that a LoRA target touches we add  Y += (X @ A) @ B  where A = [in, R] and B = [R, out] are
graph inputs: A concatenates the A matrices of all targeted projections that read X (one matmul
for q and v together), B is block-structured so each projection's update lands in its own
columns, and the LoRA scale alpha/r is folded into B. The inputs default to zero-size
initializers (R = 0), so the same model runs with no adapter at almost no cost, and any adapter of
any rank whose file names match these inputs can be loaded and swapped at run time.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ondevice.atomic import UserError

NODE_RE = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMulNBits$")
# projection name in the ONNX graph -> the HF projections it is made of, in column order
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
# an ONNX projection -> the HF projection that holds it fused (Phi-3 keeps gate_up_proj fused; the
# builder splits it into gate_proj and up_proj nodes)
PARENT = {member: fused for fused, members in FUSED.items() for member in members}


@dataclass
class Target:
    layer: int
    node: str  # ONNX projection name, e.g. qkv_proj
    members: tuple[str, ...]  # HF projections fused into it
    in_features: int
    out_features: int

    @property
    def prefix(self) -> str:
        block = "attn" if self.node in ("qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        return f"model.layers.{self.layer}.{block}.{self.node}"

    @property
    def input_a(self) -> str:
        return f"{self.prefix}.lora_A"

    @property
    def input_b(self) -> str:
        return f"{self.prefix}.lora_B"


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def find_targets(model: onnx.ModelProto, target_modules: list[str]) -> list[Target]:
    found = []
    for node in model.graph.node:
        m = NODE_RE.match(node.name)
        if node.op_type != "MatMulNBits" or not m:
            continue
        layer, _, proj = int(m.group(1)), m.group(2), m.group(3)
        members = FUSED.get(proj, (proj,))
        if proj in target_modules or any(t in members for t in target_modules) or PARENT.get(proj) in target_modules:
            a = _attrs(node)
            found.append(Target(layer, proj, members, a["K"], a["N"]))
    return found


def add_lora_inputs(model: onnx.ModelProto, target_modules: list[str]) -> list[Target]:
    """Rewrite the graph in place; returns the targets (what an adapter file must provide)."""
    graph = model.graph
    targets = {(t.layer, t.node): t for t in find_targets(model, target_modules)}
    if not targets:
        raise ValueError(f"no MatMulNBits node matches LoRA targets {target_modules}")
    dtype = next(o.type.tensor_type.elem_type for o in graph.output if o.name == "logits")
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    new_nodes = []
    for node in graph.node:
        new_nodes.append(node)
        m = NODE_RE.match(node.name)
        if node.op_type != "MatMulNBits" or not m or (int(m.group(1)), m.group(3)) not in targets:
            continue
        t = targets[(int(m.group(1)), m.group(3))]
        x, y = node.input[0], node.output[0]
        base = f"/model/layers.{t.layer}/{t.prefix.split('.')[-2]}/{t.node}/lora"
        y_base = f"{y}/before_lora"
        node.output[0] = y_base
        new_nodes += [
            helper.make_node("MatMul", [x, t.input_a], [f"{base}/xa"], name=f"{base}/MatMul_A"),
            helper.make_node("MatMul", [f"{base}/xa", t.input_b], [f"{base}/delta"], name=f"{base}/MatMul_B"),
            helper.make_node("Add", [y_base, f"{base}/delta"], [y], name=f"{base}/Add"),
        ]
        rank = f"lora_rank_{t.layer}_{t.node}"
        graph.input.append(helper.make_tensor_value_info(t.input_a, dtype, [t.in_features, rank]))
        graph.input.append(helper.make_tensor_value_info(t.input_b, dtype, [rank, t.out_features]))
        graph.initializer.append(numpy_helper.from_array(np.zeros((t.in_features, 0), np_dtype), t.input_a))
        graph.initializer.append(numpy_helper.from_array(np.zeros((0, t.out_features), np_dtype), t.input_b))
    del graph.node[:]
    graph.node.extend(new_nodes)
    return list(targets.values())


INPUT_RE = re.compile(r"^model\.layers\.(\d+)\.(attn|mlp)\.(\w+)\.lora_A$")


def _graph(model: onnx.ModelProto | Path) -> onnx.ModelProto:
    """A model's graph without its weights: callers that already hold it pass it, the rest a path."""
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)


def graph_targets(model: onnx.ModelProto | Path) -> list[Target]:
    """The LoRA inputs a built model already has: what any adapter for it must provide."""
    model = _graph(model)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    found = []
    for name, shape in dims.items():
        m = INPUT_RE.match(name)
        if m:
            node = m.group(3)
            out_features = dims[name[: -len("lora_A")] + "lora_B"][1]
            found.append(Target(int(m.group(1)), node, FUSED.get(node, (node,)), shape[0], out_features))
    if not found:
        raise ValueError("the model has no LoRA inputs; rebuild it with the optimize stage")
    return found


def column_slices(config, members: tuple[str, ...]) -> dict[str, slice]:
    """Where each HF projection's outputs sit inside a fused ONNX projection."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", config.num_attention_heads)
    sizes = {"q_proj": config.num_attention_heads * head_dim, "k_proj": kv * head_dim, "v_proj": kv * head_dim,
             "gate_proj": config.intermediate_size, "up_proj": config.intermediate_size}
    out, start = {}, 0
    for name in members:
        size = sizes.get(name)
        if size is None:  # unfused projection: the whole output
            return {name: slice(None)}
        out[name] = slice(start, start + size)
        start += size
    return out


def adapter_arrays(peft_state: dict, lora_scale: float, targets: list[Target], config, dtype=np.float32) -> dict:
    """Turn peft's lora_A/lora_B tensors into the fused A [in, R] and block B [R, out] per target."""
    arrays = {}

    def trained(layer, name):
        return any(re.search(rf"layers\.{layer}\.\w+\.{name}\.lora_A\.", k) for k in peft_state)

    for t in targets:
        # peft trained the fused projection itself (Phi-3 qkv_proj), its members (Llama q/k/v), or
        # the HF projection that this node is a part of (Phi-3 gate_up_proj -> gate_proj, up_proj)
        parent = PARENT.get(t.node)
        if trained(t.layer, t.node):
            members, slices = (t.node,), {t.node: slice(None)}
        elif parent and trained(t.layer, parent):
            members, slices = (parent,), {parent: column_slices(config, FUSED[parent])[t.node]}
        else:
            members, slices = t.members, column_slices(config, t.members)
        a_parts, b_rows = [], []
        for name in members:
            key = next((k for k in peft_state if re.search(rf"layers\.{t.layer}\.\w+\.{name}\.lora_A\.", k)), None)
            if key is None:
                continue
            a = peft_state[key].float().numpy()  # [r, in]
            b = peft_state[key.replace("lora_A", "lora_B")].float().numpy()  # [out_p, r]
            if name == parent:  # only this node's rows of the fused projection's B
                b, slices = b[slices[name]], {name: slice(None)}
            block = np.zeros((a.shape[0], t.out_features), np.float32)  # cast to `dtype` once, below
            block[:, slices[name]] = b.T * lora_scale
            a_parts.append(a.T)
            b_rows.append(block)
        if not a_parts:  # a fused node where this adapter trains none of the members
            arrays[t.input_a] = np.zeros((t.in_features, 0), dtype)
            arrays[t.input_b] = np.zeros((0, t.out_features), dtype)
            continue
        arrays[t.input_a] = np.ascontiguousarray(np.concatenate(a_parts, 1).astype(dtype))
        arrays[t.input_b] = np.ascontiguousarray(np.concatenate(b_rows, 0).astype(dtype))
    return arrays


def write_adapter(path: Path, arrays: dict) -> None:
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in arrays.items()})
    fmt.export_adapter(str(path))


def bad_adapter(path: Path, error: Exception):
    """The UserError for an adapter file onnxruntime refused (a cut-off download, or no file at all):
    one line naming the file and the stage that rebuilds it. onnxruntime's message is
    `<source>:<line> <C++ signature> <explanation>`: only the explanation is kept."""

    name = Path(path).name.removesuffix(".onnx_adapter")
    if not Path(path).is_file():
        return UserError(f"{path} missing; run `dvc repro adapter@{name}`")
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    why = text.rsplit(") ", 1)[-1].strip()[:160]
    return UserError(f"{path} is not a valid .onnx_adapter ({why}); rebuild it with `dvc repro adapter@{name}` "
                     "or download it again")


def read_adapter(path: Path) -> dict:
    """An .onnx_adapter's tensors by name; a file onnxruntime cannot read is a UserError naming it."""
    import onnxruntime as ort

    try:
        fmt = ort.AdapterFormat.read_adapter(str(path))
    except RuntimeError as e:  # onnxruntime's flatbuffer verification, or no such file
        raise bad_adapter(path, e) from None
    # The OrtValues view memory owned by `fmt`: copy while it is alive, or the arrays dangle.
    arrays = {k: np.array(v.numpy(), copy=True) for k, v in fmt.get_parameters().items()}
    del fmt
    return arrays


def check_adapter_matches(model: onnx.ModelProto | Path, arrays: dict) -> None:
    """Fail loudly if an adapter names an input the model lacks or has a wrong fixed dimension."""
    inputs = {i.name: i for i in _graph(model).graph.input}
    for name, arr in arrays.items():
        if name not in inputs:
            raise ValueError(f"adapter parameter {name} is not an input of the model")
        dims = inputs[name].type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value != arr.shape[axis]:
                raise ValueError(f"adapter parameter {name} has shape {arr.shape}; model expects dim {axis} = "
                                 f"{d.dim_value}")
    missing = [n for n in inputs if n.endswith((".lora_A", ".lora_B")) and n not in arrays]
    if missing:
        raise ValueError(f"adapter lacks {len(missing)} LoRA inputs of the model, e.g. {missing[0]}")


def lora_dtype(model: onnx.ModelProto | Path):
    """numpy dtype of the model's LoRA inputs (fp32 for CPU builds, fp16 for CUDA builds)."""
    elem = next(i.type.tensor_type.elem_type for i in _graph(model).graph.input if i.name.endswith(".lora_A"))
    return helper.tensor_dtype_to_np_dtype(elem)


def export_adapter(lora_dir: Path, onnx_dir: Path, path: Path) -> dict:
    """peft adapter folder -> .onnx_adapter whose names and shapes match the built model's LoRA inputs."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    cfg = json.loads((lora_dir / "adapter_config.json").read_text())
    state = load_file(lora_dir / "adapter_model.safetensors")
    scale = cfg["lora_alpha"] / cfg["r"]
    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)  # read once, used thrice
    targets = graph_targets(graph)
    arrays = adapter_arrays(state, scale, targets, AutoConfig.from_pretrained(onnx_dir),
                                      dtype=lora_dtype(graph))
    check_adapter_matches(graph, arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_adapter(path, arrays)
    return {"rank": cfg["r"], "alpha": cfg["lora_alpha"], "target_modules": sorted(cfg["target_modules"]),
            "parameters": int(sum(a.size for a in arrays.values())),
            "adapter_mb": round(path.stat().st_size / 1e6, 3)}


def run(lora_dir: Path, onnx_dir: Path, out_path: Path, cfg) -> dict:
    """The adapter@NAME stage: the LoRA in lora_dir as the .onnx_adapter file out_path for the model in
    onnx_dir (written beside it, then renamed: never half a file); cfg: the params.AdapterConfig it was
    trained with, checked against the folder so a stale LoRA fails in one line."""
    import tempfile

    trained = json.loads((lora_dir / "adapter_config.json").read_text())
    if trained["r"] != cfg.r or sorted(trained["target_modules"]) != sorted(cfg.target_modules):
        raise UserError(f"{lora_dir} holds r={trained['r']} on {sorted(trained['target_modules'])}, but params.yaml "
                        f"asks adapters.{cfg.name} for r={cfg.r} on {sorted(cfg.target_modules)}; "
                        f"run `dvc repro finetune@{cfg.name}`")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:  # same filesystem: the rename is atomic
        info = export_adapter(lora_dir, onnx_dir, Path(tmp) / out_path.name)
        (Path(tmp) / out_path.name).replace(out_path)
    return info
