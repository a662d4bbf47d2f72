# Sourced by run.sh on the GPU machine, after the calls that carried .gpu/p0..p4 into /root/w
# (onnxruntime-gpu 1.31.1 in 58 MB parts; both onnxruntime-genai-cuda wheels; the cut Phi-3.5 tokenizer).
# Each package goes into its own folder: /tmp/ort, /tmp/og18, /tmp/og15 (PYTHONPATH picks the pair).
set -x
REPO=$PWD W=/root/w D=reports/gpu_h200_lora_kernels
if [ ! -d /tmp/og15 ]; then
  cd $W || exit 2
  cat ort.a? > onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
  echo "$(cat ort.sha)  onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl" | sha256sum -c || exit 3
  for t in ort:onnxruntime_gpu-1.31.1 og18:onnxruntime_genai_cuda-0.18.0 og15:onnxruntime_genai_cuda-0.15.2; do
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/${t%%:*} ${t#*:}-*.whl || exit 4; done
  cd $REPO
fi
NV=$(python3 -c "import glob,site,os;print(':'.join(sorted({d for s in site.getsitepackages() for d in glob.glob(os.path.join(s,'nvidia','*','lib'))+glob.glob(os.path.join(s,'nvidia','cu13','lib','x86_64'))})))")
export LD_LIBRARY_PATH=$NV:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)"; python3 --version; } > $OUT/card.txt
