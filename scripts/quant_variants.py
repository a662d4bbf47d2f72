"""Quantizer variants, scored the way issue #18 measures int4 quality: the quantize stage's code on
the float base with `-S`-style overrides, each variant dequantized in PyTorch and scored on the
calibration adapter's eval split and on held-out text the pipeline never sees (a licence text).

Not a DVC stage (a study, like levers.py): `python scripts/quant_variants.py -S awq_gptq=false
-S "awq_gptq_damp=0.01"` after `make repro`; appends one JSON line per variant to
reports/quant_variants.jsonl ("shipped" is models/quantized as the pipeline built it).
"""
import json
import tempfile
import time
from pathlib import Path

import click
import yaml

from ondevice import params as P
from ondevice.atomic import UserError
from ondevice.cli import params_option, stage
from ondevice.data import read_jsonl
from ondevice.evaluate import encode_rows, torch_loss
from ondevice.quantize import calibration_for, load_dequantized, quantize


@click.command()
@params_option
@click.option("-S", "variants", multiple=True, help="quantize overrides, space-separated key=value pairs")
@click.option("--base", default="models/base", show_default=True)
@click.option("--shipped", default="models/quantized", show_default=True)
@click.option("--prepared", default="data/prepared", show_default=True)
@click.option("--held-out", default="/usr/share/common-licenses/GPL-3", show_default=True)
@click.option("--out", default="reports/quant_variants.jsonl", show_default=True)
@stage
def main(params_path, variants, base, shipped, prepared, held_out, out):
    params = P.load(params_path)
    split = params["quantize"]["calibration"]
    if not Path(held_out).is_file():
        raise UserError(f"{held_out} missing; pass --held-out with any plain-text file the pipeline never saw")
    overrides = {v: {k: yaml.safe_load(x) for k, x in (kv.split("=", 1) for kv in v.split())} for v in variants}
    for changes in overrides.values():
        P.validate({**params, "quantize": {**params["quantize"], **changes}})  # one line per bad key, before work
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    cfg = P.adapter_config(params, split)
    rows = read_jsonl(Path(prepared) / split / "eval.jsonl")[: params["evaluate"]["max_rows"]]
    eval_split = encode_rows(tokenizer, cfg["template"], rows, cfg["seq_len"])
    ids = tokenizer(Path(held_out).read_text())["input_ids"]
    text = [{"input_ids": ids[i:i + 256], "labels": ids[i:i + 256]} for i in range(0, min(len(ids), 256 * 24), 256)]
    calib = calibration_for(params, Path(base), Path(prepared) / split / "train.jsonl")
    models = {"shipped": lambda: (load_dequantized(shipped), None)}
    for v, changes in overrides.items():
        def build(changes=changes):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                quantize(Path(base), Path(tmp), {**params["quantize"], **changes}, calib, Path(tmp) / "work")
                return load_dequantized(tmp), round(time.perf_counter() - t0, 1)
        models[v] = build
    with open(out, "a") as f:
        for name, load in models.items():
            model, seconds = load()
            record = {"variant": name, "quantize_s": seconds, f"{split}_eval": torch_loss(model, eval_split),
                      "held_out": {**torch_loss(model, text), "file": held_out}}
            f.write(json.dumps(record) + "\n")
            click.echo(json.dumps(record))


if __name__ == "__main__":
    main()
