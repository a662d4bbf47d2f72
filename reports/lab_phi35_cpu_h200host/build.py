"""#29, the CPU half at the lab's scale, on the GPU machine's 16-CPU host: the Phi-3.5-mini shape
(random init on the GPU, bf16) built by the onnxruntime-genai 0.18 builder for the CPU (int4,
accuracy level 4, onnxruntime's own thread choice), our LoRA inputs on qkv_proj (the GPU profile's
target, fp32 on the CPU), random peft LoRA r64 / r16 exported by our adapter path."""
import json, shutil, sys, time
from pathlib import Path

sys.path.insert(0, ".")
sys.path.insert(0, "reports/gpu_h200_phi35_cuda_graph")
from phi35 import random_adapters, random_float, with_lora_inputs  # noqa: E402
from ondevice.export.builder import run_builder
from ondevice.sources.random_source import shape_config

root, tok = Path(sys.argv[1]), Path(sys.argv[2])
t = {}
config = shape_config("random:phi-3.5-mini")
t0 = time.time()
random_float(root, tok, config, "cuda")  # initialising 3.8 B weights is minutes on a CPU, seconds on the card
t["float_s"] = round(time.time() - t0, 1)
t["builder_cpu_int4_s"] = round(run_builder(root / "float", root / "builder", "int4", "cpu", root / "cache",
                                            ["accuracy_level=4"]), 1)
g = json.loads((root / "builder" / "genai_config.json").read_text())
g["model"]["decoder"]["session_options"]["intra_op_num_threads"] = 0  # as optimize ships it: one per core
(root / "builder" / "genai_config.json").write_text(json.dumps(g, indent=4))
shutil.copy2(root / "float" / "config.json", root / "builder" / "config.json")
shutil.copytree(root / "builder", root / "ours")
with_lora_inputs(root / "ours")
t.update(random_adapters(root, config, root / "ours"))
t["model_mb"] = round(sum(p.stat().st_size for p in (root / "ours").glob("model.onnx*")) / 1e6, 1)
print(json.dumps(t))
