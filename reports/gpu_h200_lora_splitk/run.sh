# On the GPU machine, after `../gpu_h200_whole/device.sh part aa..ae` (onnxruntime-gpu 1.31.1 in 58 MiB parts,
# joined and checked in /root/w): onnxruntime-gpu alone in /tmp/ort, the image's CUDA 13 libraries, then each of
# SCRIPTS (2026-12-04: `splitk` in one call, `inside` in the next lease) -> $OUT/NAME.jsonl
W=/root/w D=reports/gpu_h200_lora_splitk
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ort $W/onnxruntime_gpu-1.31.1-*.whl || exit 4
NV=$(python3 -c "import glob,site,os;print(':'.join(sorted({d for s in site.getsitepackages() for d in glob.glob(os.path.join(s,'nvidia','*','lib'))+glob.glob(os.path.join(s,'nvidia','cu13','lib','x86_64'))})))")
export LD_LIBRARY_PATH=$NV:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)"; python3 --version; } > $OUT/card.txt
for s in ${SCRIPTS:-splitk}; do PYTHONPATH=/tmp/ort python3 $D/$s.py ${REPEATS:-3} | tee $OUT/$s.jsonl; done
