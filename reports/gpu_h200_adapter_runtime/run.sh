set -x
cd /root/w
cat ort.a? > onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
echo "$(cat ort.sha)  onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl" | sha256sum -c || exit 3
for t in ort:onnxruntime_gpu-1.31.1 og18:onnxruntime_genai_cuda-0.18.0 og15:onnxruntime_genai_cuda-0.15.2; do
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/${t%%:*} ${t#*:}-*.whl || exit 4; done
cat m.tar.* | tar x || exit 5
NV=$(python3 -c "import glob,site,os;print(':'.join(sorted({d for s in site.getsitepackages() for d in glob.glob(os.path.join(s,'nvidia','*','lib'))+glob.glob(os.path.join(s,'nvidia','cu13','lib','x86_64'))})))")
export LD_LIBRARY_PATH=$NV:${LD_LIBRARY_PATH:-}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)"; python3 --version; } > $OUT/card.txt
cat $OUT/card.txt
PYTHONPATH=/tmp/ort python3 make_big_adapter.py travel.onnx_adapter r64.onnx_adapter 64
PYTHONPATH=/tmp/ort python3 make_big_adapter.py travel.onnx_adapter r512.onnx_adapter 512
A="travel=travel.onnx_adapter r64=r64.onnx_adapter r512=r512.onnx_adapter"
for v in 18 15; do PYTHONPATH=/tmp/og$v:/tmp/ort python3 tokens.py onnx $A >> $OUT/tokens.jsonl 2>>$OUT/err.txt; done
for rep in 1 2; do for v in 18 15; do
  PYTHONPATH=/tmp/og$v:/tmp/ort python3 adapter_cost_test.py onnx $A 2>>$OUT/err.txt | tee -a $OUT/adapter_cost.jsonl
done; done
tail -20 $OUT/err.txt
