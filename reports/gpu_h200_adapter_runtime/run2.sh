set -x
cd /root/w
cat ort.a? > onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
echo "$(cat ort.sha)  onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl" | sha256sum -c || exit 3
for t in ort:onnxruntime_gpu-1.31.1 og18:onnxruntime_genai_cuda-0.18.0 og15:onnxruntime_genai_cuda-0.15.2; do
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/${t%%:*} ${t#*:}-*.whl || exit 4; done
cat m.tar.* | tar x || exit 5
NV=$(python3 -c "import glob,site,os;print(':'.join(sorted({d for s in site.getsitepackages() for d in glob.glob(os.path.join(s,'nvidia','*','lib'))})))")
export LD_LIBRARY_PATH=$NV:${LD_LIBRARY_PATH:-}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)"; } > $OUT/card.txt
PYTHONPATH=/tmp/ort python3 make_big_adapter.py travel.onnx_adapter r64.onnx_adapter 64 >/dev/null
PYTHONPATH=/tmp/ort python3 make_big_adapter.py travel.onnx_adapter r512.onnx_adapter 512 >/dev/null
PYTHONPATH=/tmp/ort python3 pack.py onnx packed travel=travel.onnx_adapter r64=random:64 r512=random:512 | tee $OUT/pack.txt
A="travel=travel.onnx_adapter r64=r64.onnx_adapter r512=r512.onnx_adapter"
P="travel=packed/travel.onnx_adapter r64=packed/r64.onnx_adapter r512=packed/r512.onnx_adapter"
for v in 18 15; do
  PYTHONPATH=/tmp/og$v:/tmp/ort python3 tokens.py onnx travel=travel.onnx_adapter >> $OUT/tokens.jsonl 2>>$OUT/err.txt
  PYTHONPATH=/tmp/og$v:/tmp/ort python3 tokens.py packed travel=packed/travel.onnx_adapter >> $OUT/tokens.jsonl 2>>$OUT/err.txt
done
for rep in 1 2; do for v in 18 15; do
  echo "{\"graph\": \"per-layer\", \"rep\": $rep}" >> $OUT/adapter_cost.jsonl
  PYTHONPATH=/tmp/og$v:/tmp/ort python3 adapter_cost_test.py onnx $A 2>>$OUT/err.txt | tee -a $OUT/adapter_cost.jsonl
  echo "{\"graph\": \"packed\", \"rep\": $rep}" >> $OUT/adapter_cost.jsonl
  PYTHONPATH=/tmp/og$v:/tmp/ort python3 adapter_cost_test.py packed $P 2>>$OUT/err.txt | tee -a $OUT/adapter_cost.jsonl
done; done
tail -5 $OUT/err.txt
