"""The weight widths every quantize algorithm writes, apart so awq.py and the package share them without a cycle."""
# Every algorithm writes 4-bit weights: MatMulNBits int4 is what the optimize stage builds and what
# onnxruntime's CPU and CUDA kernels are fast at. Not a knob (#16: a knob with one allowed value).
BITS = 4
# The width of the projections `quantize.int8_modules` names (mixed precision): MatMulNBits' other
# width, which onnxruntime runs on CPU (every accuracy level) and CUDA, at the same group size.
INT8_BITS = 8
