# One call on the GPU machine, after .whl/aa..ad were copied to /root/w by earlier calls (wheels > 64 MiB travel in parts).
. reports/gpu_h200_phi35_cuda_graph/setup.sh
PYTHONPATH=/tmp/og18:/tmp/ort python3 $D/build.py $M gpucheck/phi35_tok > $OUT/build.json 2> $OUT/build_err.txt || { tail -30 $OUT/build_err.txt; exit 5; }
cat $OUT/build.json
PYTHONPATH=/tmp/ort python3 $D/gemm.py $M/ours_cg $M/gemm_cg
for d in ours ours_cg gemm_cg builder builder_cg; do  # 0.15.2's parser refuses the key 0.18 added (at its default, 0)
  python3 -c "import json,sys; p=sys.argv[1]; g=json.load(open(p)); assert g['model']['decoder'].get('sliding_window',{}).pop('cache_slack',0)==0; json.dump(g,open(p,'w'),indent=4)" $M/$d/genai_config.json; done
A="r64=$M/r64.onnx_adapter r16=$M/r16.onnx_adapter"
for rep in 1 2 3; do for dir in gemm_cg ours_cg; do
  PYTHONPATH=/tmp/og15:/tmp/ort python3 $D/cost.py $M/$dir $M/builder_cg $A 2>>$OUT/err.txt | tee -a $OUT/cost.jsonl | cut -c1-330
done; done
PYTHONPATH=/tmp/og18:/tmp/ort python3 $D/cost.py $M/gemm_cg $M/builder_cg $A 2>>$OUT/err.txt | tee -a $OUT/cost.jsonl | cut -c1-330
tail -5 $OUT/err.txt
