"""#28: where the base's 0.89x of the builder's own build goes, and what the adapter costs on each.

On the GPU machine, after `make repro-gpu` (device.sh `attribute`, in its run folder): four builds of
the same float base, decoded in interleaved rounds through the CUDA serving runtime (a child process
that imports it first, as the benchmark stage does), with the travel adapter on the two that take it:

  ours            models/onnx as shipped: AWQ int4 (asymmetric, GPTQ-rounded head) + LoRA inputs on qkv_proj
  ours_no_lora    the same graph with its 32 LoRA branches taken out (weights shared, hard links)
  builder         the builder's own default int4 CUDA build of models/base (the issue's bar)
  builder_lora    that build + our LoRA inputs (its int4 nodes renamed as ours are, then onnx_lora.add_lora_inputs)

usage: PYTHONPATH=reports/gpu_h200_whole2:$PYTHONPATH python3 reports/gpu_h200_whole2/attribute.py OUT.json
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

ROUNDS, WARMUP = 9, 1


def hardlinked_copy(src: Path, dst: Path, skip: str = "") -> None:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != skip:
            os.link(f, dst / f.name)


def strip_lora(src: Path, dst: Path) -> int:
    """dst: src's model with every LoRA branch removed (MatMulNBits writes the layer's output again)."""
    import onnx

    hardlinked_copy(src, dst, skip="model.onnx")
    model = onnx.load(str(src / "model.onnx"), load_external_data=False)
    graph = model.graph
    adds = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "Add" and "/lora/" in n.name}
    for node in graph.node:
        if node.op_type == "MatMulNBits" and node.output[0] in adds:
            node.output[0] = adds[node.output[0]]
    keep = [n for n in graph.node if "/lora/" not in n.name]
    del graph.node[:]
    graph.node.extend(keep)
    lora = lambda name: name.endswith((".lora_A", ".lora_B"))  # noqa: E731
    for field in (graph.input, graph.initializer):
        kept = [x for x in field if not lora(x.name)]
        del field[:]
        field.extend(kept)
    onnx.save(model, str(dst / "model.onnx"))
    return len(adds)


def measure(models: dict, adapter: str) -> dict:
    """In the child: every build and adapter pairing, interleaved rounds, medians."""
    import onnxruntime_genai as og

    from ondevice.measure.engines import interleaved, prompt_ids, timed_answer
    from ondevice.runtime.client import kv_capacity_floor, open_model

    engines = {}
    for name, folder in models.items():
        with_adapter = name in ("ours", "builder_lora")
        model, tok, loaded = open_model(Path(folder), {"travel": Path(adapter)} if with_adapter else None)
        ids, floor = prompt_ids(tok.encode, 64), kv_capacity_floor(Path(folder))
        engines[name] = lambda m=model, i=ids, f=floor: timed_answer(m, None, None, i, 128, f)
        if with_adapter:
            engines[f"{name}+travel"] = (lambda m=model, a=loaded, i=ids, f=floor:
                                         timed_answer(m, a, "travel", i, 128, f))
    runs = interleaved(engines, ROUNDS, WARMUP)
    tok_s = {n: round(statistics.median(r["decode_tok_s"] for r in rs), 1) for n, rs in runs.items()}
    spread = {n: [round(min(r["decode_tok_s"] for r in rs), 1), round(max(r["decode_tok_s"] for r in rs), 1)]
              for n, rs in runs.items()}
    return {"runtime": f"onnxruntime-genai-cuda {og.__version__}", "decode_tok_s": tok_s, "min_max": spread,
            "rounds": ROUNDS}


def main(out: Path) -> None:
    import attribute  # this file as a module: the child imports `measure` by name

    from ondevice.child import in_child
    from ondevice.measure.benchmark_cuda import builder_default_build, gpu_name
    from ondevice.runtime.client import cuda_serving_path

    work = Path("/root/attrib")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    t0 = time.time()
    branches = strip_lora(Path("models/onnx"), work / "ours_no_lora")
    build_s = builder_default_build(Path("models/base"), work / "builder", cuda_graph=True)
    hardlinked_copy(work / "builder", work / "builder_lora", skip="model.onnx")
    import onnx

    from ondevice.export import onnx_lora

    graph = onnx.load(str(work / "builder" / "model.onnx"), load_external_data=False)
    for node in graph.graph.node:  # the builder names its own int4 nodes .../MatMul
        if node.op_type == "MatMulNBits":
            node.name = re.sub(r"/MatMul(_Q4)?$", "/MatMulNBits", node.name)
    onnx_lora.add_lora_inputs(graph, ["qkv_proj"])
    onnx.save(graph, str(work / "builder_lora" / "model.onnx"))
    prepare_s = time.time() - t0
    models = {"ours": "models/onnx", "ours_no_lora": str(work / "ours_no_lora"), "builder": str(work / "builder"),
              "builder_lora": str(work / "builder_lora")}
    if os.environ.get("SYMMETRIC"):  # device.sh `symmetric`: the same base quantized with quantize.symmetric: true
        models["ours_symmetric"] = os.environ["SYMMETRIC"]
    m = in_child(attribute.measure, path_first=cuda_serving_path(), models=models,
                 adapter="models/adapters/travel.onnx_adapter")
    t = m["decode_tok_s"]
    m.update(device=gpu_name(), branches_removed=branches, builder_build_s=round(build_s, 1),
             prepare_s=round(prepare_s, 1),
             ratios={"ours_vs_builder": round(t["ours"] / t["builder"], 3),
                     "ours_no_lora_vs_builder": round(t["ours_no_lora"] / t["builder"], 3),
                     "builder_lora_vs_builder": round(t["builder_lora"] / t["builder"], 3),
                     "ours_vs_ours_no_lora": round(t["ours"] / t["ours_no_lora"], 3),
                     **({"ours_symmetric_vs_builder": round(t["ours_symmetric"] / t["builder"], 3)}
                        if "ours_symmetric" in t else {}),
                     "adapter_cost_pct_ours": round(100 * (1 - t["ours+travel"] / t["ours"]), 2),
                     "adapter_cost_pct_builder_lora":
                         round(100 * (1 - t["builder_lora+travel"] / t["builder_lora"]), 2)})
    out.write_text(json.dumps(m, indent=1))
    print(json.dumps(m, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
