"""On-device LLM pipeline: quantize (AWQ/RTN/GPTQ) -> LoRA -> int4 ONNX + hot-swappable adapter."""

import os

# Olive reports usage telemetry by default; a build pipeline (often offline) should not.
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
