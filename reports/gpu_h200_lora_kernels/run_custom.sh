# The LoraUpdate custom op (lora_op.cu) in the Phi-3.5-mini-shaped build with CUDA graphs, served by
# onnxruntime-genai-cuda 0.15.2 through the seed client's calls (cost.py), against the shipped branches.
# After calls that carried .gpu/p0..p3 (p0 also holds the onnxruntime C API headers, ortinc/); carries p4.
cp -a .gpu/p4/* /root/w/ && . reports/gpu_h200_lora_kernels/setup.sh
M=/root/m && rm -rf $M && mkdir -p $M
nvcc -O3 -arch=sm_90 -std=c++17 -shared -Xcompiler -fPIC -I$W/ortinc $D/lora_op.cu -o $M/liblora.so || exit 5
PYTHONPATH=/tmp/og18:/tmp/ort python3 reports/gpu_h200_phi35_cuda_graph/build.py $M $W/phi35_tok > $OUT/build.json 2> $OUT/build_err.txt || { tail -30 $OUT/build_err.txt; exit 6; }
PYTHONPATH=/tmp/og18:/tmp/ort python3 $D/custom.py $M/ours_cg $M/lora_cg $M/liblora.so || exit 7
for d in ours_cg builder_cg lora_cg; do  # 0.15.2's parser refuses the key 0.18 added (at its default, 0)
  python3 -c "import json,sys; p=sys.argv[1]; g=json.load(open(p)); assert g['model']['decoder'].get('sliding_window',{}).pop('cache_slack',0)==0; json.dump(g,open(p,'w'),indent=4)" $M/$d/genai_config.json; done
A="r64=$M/r64.onnx_adapter r16=$M/r16.onnx_adapter"
for rep in 1 2; do for dir in lora_cg ours_cg; do
  PYTHONPATH=/tmp/og15:/tmp/ort python3 reports/gpu_h200_phi35_cuda_graph/cost.py $M/$dir $M/builder_cg $A 2>>$OUT/err.txt | tee -a $OUT/cost.jsonl | cut -c1-420
done; done
tail -5 $OUT/err.txt
