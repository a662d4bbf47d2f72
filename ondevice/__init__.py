"""On-device LLM pipeline: quantize (AWQ/RTN/GPTQ) -> LoRA -> int4 ONNX + hot-swappable adapter."""
