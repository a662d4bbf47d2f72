# One call on the GPU machine, after .whl/aa..ad were copied to /root/w by earlier calls (wheels > 64 MiB travel in parts).
. reports/gpu_h200_phi35_cuda_graph/setup.sh
PYTHONPATH=/tmp/og18:/tmp/ort python3 $D/build.py $M gpucheck/phi35_tok > $OUT/build.json 2> $OUT/build_err.txt || { tail -30 $OUT/build_err.txt; exit 5; }
cat $OUT/build.json
A="r64=$M/r64.onnx_adapter r16=$M/r16.onnx_adapter"
for rep in 1 2; do for v in 18 15; do for pair in ours:builder ours_cg:builder_cg; do
  PYTHONPATH=/tmp/og$v:/tmp/ort python3 $D/cost.py $M/${pair%%:*} $M/${pair#*:} $A 2>>$OUT/err.txt | tee -a $OUT/cost.jsonl | cut -c1-330
done; done; done
tail -5 $OUT/err.txt
