# The device call's set-up, sourced by run*.sh: onnxruntime-gpu from its parts (.whl/aa..ae), each genai version in its own folder, the image's CUDA 13 libraries, the card.
set -x
REPO=$PWD W=/root/w D=reports/gpu_h200_phi35_cuda_graph
cp .whl/ae/* $W/ && cd $W || exit 2
cat ort.a? > onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
echo "$(cat ort.sha)  onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl" | sha256sum -c || exit 3
for t in ort:onnxruntime_gpu-1.31.1 og18:onnxruntime_genai_cuda-0.18.0 og15:onnxruntime_genai_cuda-0.15.2; do
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/${t%%:*} ${t#*:}-*.whl || exit 4; done
NV=$(python3 -c "import glob,site,os;print(':'.join(sorted({d for s in site.getsitepackages() for d in glob.glob(os.path.join(s,'nvidia','*','lib'))+glob.glob(os.path.join(s,'nvidia','cu13','lib','x86_64'))})))")
export LD_LIBRARY_PATH=$NV:${LD_LIBRARY_PATH:-}
cd $REPO
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400; python3 --version; } > $OUT/card.txt
M=/root/m; rm -rf $M; mkdir -p $M
