"""On the GPU machine: the Phi-3.5-mini-shaped model, built four ways, and random peft LoRA adapters.

float/      random-init Phi-3.5-mini shape (ondevice.sources.random_source), bf16, the cut SmolLM2 tokenizer
builder/    the onnxruntime-genai 0.18 builder's own int4 CUDA build (the bar: base >= 0.9x it)
ours/       builder/ + our LoRA inputs on qkv_proj (ondevice.export.build.add_adapter_inputs), as shipped
*_cg/       the same with optimize.cuda_graph: LongRoPE's switch dropped, context capped, graphs on
r64, r16    random peft-format LoRA on qkv_proj, through ondevice.export.onnx_lora's own adapter path
"""
import json, shutil, sys, time
from pathlib import Path


sys.path.insert(0, ".")
sys.path.insert(0, "reports/gpu_h200_phi35_cuda_graph")
from phi35 import random_adapters, random_float, with_lora_inputs  # noqa: E402
from ondevice.export.builder import run_builder, use_cuda_graph
from ondevice.sources.random_source import shape_config

root, tok = Path(sys.argv[1]), Path(sys.argv[2])
t = {}
config = shape_config("random:phi-3.5-mini")
TINY = len(sys.argv) > 3  # a local dry run: 2 small layers, CPU
provider, device = ("cpu", "cpu") if TINY else ("cuda", "cuda")
if TINY:
    config.update(dict(hidden_size=192, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2))
t0 = time.time()
random_float(root, tok, config, device)
t["float_s"] = time.time() - t0

t0 = time.time()
t["builder_s"] = run_builder(root / "float", root / "builder", "int4", provider, root / "cache", [])
shutil.copy2(root / "float" / "config.json", root / "builder" / "config.json")  # export_adapter reads sizes
shutil.copytree(root / "builder", root / "ours")
with_lora_inputs(root / "ours")


def graphs_on(src, dst):  # optimize.cuda_graph: the switch dropped, the context capped, graphs on
    shutil.copytree(src, dst)
    use_cuda_graph(dst)
    return json.loads((dst / "genai_config.json").read_text())["model"]["context_length"]


t["context_rows"] = graphs_on(root / "ours", root / "ours_cg")
graphs_on(root / "builder", root / "builder_cg")
t["variants_s"] = time.time() - t0

t.update(random_adapters(root, config, root / "ours"))
print(json.dumps(t))
