# One call on the GPU machine, after .whl/aa..ad were copied to /root/w by earlier calls (wheels > 64 MiB travel in parts).
. reports/gpu_h200_phi35_cuda_graph/setup.sh
PYTHONPATH=/tmp/og18:/tmp/ort python3 $D/build.py $M gpucheck/phi35_tok > $OUT/build.json 2> $OUT/build_err.txt || { tail -30 $OUT/build_err.txt; exit 5; }
cat $OUT/build.json
# the benchmark stage's code: serving runtime 0.15.2 (its own folder, a child process), then without it (0.18)
ONDEVICE_CUDA_SERVE=/tmp/og15 PYTHONPATH=/tmp/og18:/tmp/ort python3 $D/bench.py $M ours_cg > $OUT/bench_og15.json 2> $OUT/bench_err.txt || tail -20 $OUT/bench_err.txt
ONDEVICE_CUDA_SERVE=/nonexistent PYTHONPATH=/tmp/og18:/tmp/ort python3 - $M <<'PY' > $OUT/bench_og18.json 2>> $OUT/bench_err.txt || tail -20 $OUT/bench_err.txt
import json, sys, yaml
from pathlib import Path
sys.path.insert(0, ".")
from ondevice.measure.benchmark_cuda import benchmark
root = Path(sys.argv[1])
b = {**yaml.safe_load(Path("params.yaml").read_text())["benchmark"], "builder_reference": True, "torch_baseline": False}
m, p = benchmark(root / "ours_cg", {"r64": root / "r64.onnx_adapter", "r16": root / "r16.onnx_adapter"}, root / "float", b)
print(json.dumps({"metrics": m, "plots": p}, indent=1))
PY
python3 -c "
import json
for f in ('bench_og15', 'bench_og18'):
    m = json.load(open('$OUT/' + f + '.json'))['metrics']
    print(f, m['runtime'], m['cuda_graph'], m['adapter_decode_cost_pct'], m.get('base_vs_builder'), {k: v['decode_tok_s'] for k, v in m.items() if isinstance(v, dict) and 'decode_tok_s' in v})
"
grep -i -E "warning|error" $OUT/bench_err.txt | head -5
