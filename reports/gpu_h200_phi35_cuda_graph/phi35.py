"""The Phi-3.5-mini shape's parts for the device studies (this folder's build.py and
reports/lab_phi35_cpu_h200host/): the random-init float model, our LoRA inputs on a build from float,
random peft LoRA adapters exported by our own adapter path.

Not ondevice.sources.random_source.materialize: it cuts the tokenizer from the embedded GGUF, whose
package the device machine lacks, so the cut tokenizer travels as files (`tok`)."""
import json
import shutil
from pathlib import Path

import onnx
import torch
from safetensors.torch import save_file

from ondevice.export.build import add_adapter_inputs
from ondevice.export.onnx_lora import export_adapter


def random_float(root: Path, tok: Path, config, device: str) -> Path:
    """bf16 random-init weights of `config` and the cut tokenizer, in root/float."""
    from transformers import Phi3ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = Phi3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(root / "float")
    for f in tok.iterdir():
        shutil.copy2(f, root / "float" / f.name)
    return root / "float"


def with_lora_inputs(onnx_dir: Path) -> None:
    """Our LoRA inputs on qkv_proj (the GPU profile's target). A build from float names its int4 nodes
    .../MatMul_Q4, one from our checkpoint .../MatMulNBits, which the LoRA pass looks for: names only."""
    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    for node in graph.graph.node:
        node.name = node.name.replace("/MatMul_Q4", "/MatMulNBits")
    onnx.save(graph, str(onnx_dir / "model.onnx"))
    add_adapter_inputs(onnx_dir, ["qkv_proj"])


def random_adapters(root: Path, config, onnx_dir: Path, ranks=(64, 16)) -> dict:
    g = torch.Generator().manual_seed(1)
    out = {}
    for r in ranks:
        lora = root / f"lora_r{r}"
        lora.mkdir()
        state = {}
        for i in range(config.num_hidden_layers):
            k = f"base_model.model.model.layers.{i}.self_attn.qkv_proj"
            state[f"{k}.lora_A.weight"] = torch.randn(r, config.hidden_size, generator=g) / config.hidden_size ** 0.5
            state[f"{k}.lora_B.weight"] = torch.randn(3 * config.hidden_size, r, generator=g) * 0.02
        save_file(state, lora / "adapter_model.safetensors")
        (lora / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 2 * r,
                                                              "target_modules": ["qkv_proj"]}))
        out[f"r{r}"] = export_adapter(lora, onnx_dir, root / f"r{r}.onnx_adapter")
    return out
