# On the GPU machine, after four calls that each carried one part of .gpu/p0..p3 into /root/w (wheels over
# 64 MiB travel in parts); this call carries .gpu/p4 (the last part, its sha256, the genai wheels).
cp -a .gpu/p4/* /root/w/ && . reports/gpu_h200_lora_kernels/setup.sh
PYTHONPATH=/tmp/ort python3 $D/micro.py 3 | tee $OUT/micro.jsonl   # onnxruntime's kernels for each layout
python3 $D/fused.py | tee $OUT/fused.jsonl                          # hand-written kernels (CuPy, the image's own)
# The custom op in the full model: run_custom.sh (its own call, after the same four carrying calls; .gpu/p0 also
# holds the onnxruntime C API headers, ortinc/, from yalue/onnxruntime_go's vendored copy, API version 29).
