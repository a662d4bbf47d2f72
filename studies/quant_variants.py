"""Quantizer variants, scored the way issue #18 measures int4 quality: the quantize stage's code on
the float base with `-S`-style overrides, each variant dequantized in PyTorch and scored on the
calibration adapter's eval split and on held-out text the pipeline never sees (a licence text).

Not a DVC stage (a study, like levers.py): `python studies/quant_variants.py -S awq_gptq=false
-S "awq_gptq_damp=0.01"` after `make repro`; appends one JSON line per variant to
reports/quant_variants.jsonl ("shipped" is models/quantized as the pipeline built it). With --decode
(the default) each variant is also built to ONNX as optimize builds it (at the shipped accuracy level)
and decoded in rounds over all variants, so the trade is one table: perplexity beside bits per
weight, model size and decode speed (mixed precision: -S "int8_modules=[down_proj]").
"""
import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import held_out
import yaml

from ondevice import params as P
from ondevice.checkpoint import load_dequantized
from ondevice.child import in_child
from ondevice.cli import params_option, stage
from ondevice.data import read_jsonl
from ondevice.export.build import optimize
from ondevice.measure.engines import interleaved, onnx_decode, weight_bytes_per_token
from ondevice.measure.evaluate import encode_rows, torch_loss
from ondevice.measure.onnx_scoring import level_record
from ondevice.quantize import bits_per_weight, calibration_for, quantize


@click.command()
@params_option
@click.option("-S", "variants", multiple=True, help="quantize overrides, space-separated key=value pairs")
@click.option("--base", default="models/base", show_default=True)
@click.option("--shipped", default="models/quantized", show_default=True)
@click.option("--prepared", default="data/prepared", show_default=True)
@click.option("--held-out", "held_out_path", default=held_out.DEFAULT, show_default=True)
@click.option("--onnx", "shipped_onnx", default="models/onnx", show_default=True,
              help="the shipped build: its accuracy level is the one every variant is built at")
@click.option("--decode/--no-decode", default=True, show_default=True,
              help="build each variant to ONNX and clock its decode (benchmark: settings)")
@click.option("--rounds", default=3, show_default=True, help="decode passes over all variants; medians reported")
@click.option("--out", default="reports/quant_variants.jsonl", show_default=True)
@stage
def main(params_path, variants, base, shipped, prepared, held_out_path, shipped_onnx, decode, rounds, out):
    params = P.load(params_path)
    split = params["quantize"]["calibration"]
    held_out.require(held_out_path)
    overrides = {v: {k: yaml.safe_load(x) for k, x in (kv.split("=", 1) for kv in v.split())} for v in variants}
    for changes in overrides.values():
        P.validate({**params, "quantize": {**params["quantize"], **changes}})  # one line per bad key, before work
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    cfg = P.adapter_config(params, split)
    rows = read_jsonl(Path(prepared) / split / "eval.jsonl")[: params["evaluate"]["max_rows"]]
    eval_split = encode_rows(tokenizer, cfg["template"], rows, cfg["seq_len"])
    text = held_out.held_out_rows(tokenizer, held_out_path, rows=24)
    level = level_record(Path(shipped_onnx))["accuracy_level"] if decode else None
    records, builds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, changes in {"shipped": None, **overrides}.items():
            folder, seconds, tokens = Path(shipped), None, None
            if changes is not None:  # its own calibration blocks: calibration_samples / _seq_len may be what it varies
                q = {**params["quantize"], **changes}
                calib = calibration_for({**params, "quantize": q}, Path(base), Path(prepared) / split / "train.jsonl")
                folder = Path(tmp) / f"q{len(records)}"
                folder.mkdir()
                t0 = time.perf_counter()
                tokens = quantize(Path(base), folder, q, calib, Path(tmp) / "work")["calibration_tokens"]
                seconds = round(time.perf_counter() - t0, 1)
            model = load_dequantized(folder)
            records[name] = {"variant": name, "quantize_s": seconds, "calibration_tokens": tokens,
                             f"{split}_eval": torch_loss(model, eval_split),
                             "held_out": {**torch_loss(model, text), "file": held_out_path},
                             "bits_per_weight": bits_per_weight(folder)}
            if decode:  # the ONNX model this checkpoint ships as, at the shipped level
                onnx = builds[name] = Path(tmp) / f"onnx{len(builds)}"
                onnx.mkdir()
                built = optimize(folder, onnx, {**params["optimize"], "int4_accuracy_level": level}, Path(tmp) / "work")
                records[name].update(model_mb=built["model_mb"],
                                     weight_mb_per_token=round(weight_bytes_per_token(onnx) / 1e6, 2),
                                     accuracy_level=level)
        # Rounds over all variants, one child process each: the box drifts, so no variant gets all the quiet.
        speeds = interleaved({name: lambda onnx=onnx: in_child(onnx_decode, onnx_dir=str(onnx), adapter=None,
                                                               adapter_name="", b=params["benchmark"])["decode_tok_s"]
                              for name, onnx in builds.items()}, rounds if decode else 0)
    with open(out, "a") as f:
        for name, record in records.items():
            if speeds.get(name):
                record["decode_tok_s"] = round(statistics.median(speeds[name]), 1)
            f.write(json.dumps(record) + "\n")
            click.echo(json.dumps(record))

if __name__ == "__main__":
    main()
