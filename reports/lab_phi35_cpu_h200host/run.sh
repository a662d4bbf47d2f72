# One call on the GPU machine (16-CPU host): CPU wheels carried in .whl2 (onnxruntime 1.31.1, onnxruntime-genai 0.18.0).
set -x
D=reports/lab_phi35_cpu_h200host M=/root/m
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/cpu .whl2/*.whl || exit 4
export PYTHONPATH=/tmp/cpu
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|L3"; grep -o -w -E "avx512f|avx512_vnni|avx512_bf16|amx_tile|avx2" /proc/cpuinfo | sort | uniq -c; free -g | head -2; python3 --version; } > $OUT/card.txt
rm -rf $M; mkdir -p $M
timeout 300 python3 $D/build.py $M gpucheck/phi35_tok > $OUT/build.json 2> $OUT/build_err.txt || { tail -20 $OUT/build_err.txt; exit 5; }
cat $OUT/build.json
python3 $D/bandwidth.py $M/ours > $OUT/bandwidth.json; cat $OUT/bandwidth.json
NEW_TOKENS=64 ROUNDS=3 timeout 200 python3 reports/gpu_h200_phi35_cuda_graph/cost.py $M/ours $M/builder r64=$M/r64.onnx_adapter r16=$M/r16.onnx_adapter 2>$OUT/err.txt | tee $OUT/cost.jsonl | cut -c1-400
tail -3 $OUT/err.txt
