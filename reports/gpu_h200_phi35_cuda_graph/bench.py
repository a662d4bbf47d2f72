"""On the GPU machine, after build.py: the benchmark stage's own CUDA code (ondevice.measure.benchmark_cuda) on
the Phi-3.5-mini-shaped build with optimize.cuda_graph, its adapters served by the runtime that
runtime.cuda_serving_path finds (ONDEVICE_CUDA_SERVE), the builder's reference build and PyTorch bf16
in the same run, params.yaml's benchmark section with builder_reference on (as `make repro-gpu`)."""
import json, sys
from pathlib import Path

import yaml

sys.path.insert(0, ".")
from ondevice.measure.benchmark_cuda import benchmark

root = Path(sys.argv[1])
b = {**yaml.safe_load(Path("params.yaml").read_text())["benchmark"], "builder_reference": True}
adapters = {"r64": root / "r64.onnx_adapter", "r16": root / "r16.onnx_adapter"}
metrics, plots = benchmark(root / sys.argv[2], adapters, root / "float", b)
print(json.dumps({"metrics": metrics, "plots": plots}, indent=1))
