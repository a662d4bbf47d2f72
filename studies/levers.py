"""Measure the CPU-speed levers of issue #5 in one run: each variant of the shipped model decoded
by the benchmark's own engine, base and with an adapter, same prompt, same process tree.

Not a DVC stage (it rebuilds ONNX variants in a temp dir): `python studies/levers.py`, after
`make repro`; writes reports/levers.json.
"""
import json
import statistics
import tempfile
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_json
from ondevice.child import in_child
from ondevice.cli import params_option, stage
from ondevice.export.build import optimize
from ondevice.export.onnx_lora import export_adapter
from ondevice.measure.engines import context_decode, interleaved, paired_decode, weight_bytes_per_token


def variants(params: dict) -> dict:
    """name -> (optimize overrides, session option overrides); head_block_size: the head's int4 block."""
    o = params["optimize"]
    return {
        "shipped": ({}, {}),
        "accuracy_level_0": ({"int4_accuracy_level": 0}, {}),
        "head_block_128": ({"head_block_size": 128}, {}),
        "no_spinning": ({}, {"session.intra_op.allow_spinning": "0"}),
        # intra_op_num_threads unset: onnxruntime-genai's own default, logical CPUs / 2 (what shipped before #17)
        "genai_default_threads": ({}, {"intra_op_num_threads": None}),
        "full_prefill_logits": ({"prune_lm_head": not o["prune_lm_head"]}, {}),
        "lora_on_all_projections": ({"lora_targets": sorted(set(o["lora_targets"]) | {"o_proj", "gate_proj",
                                                                                    "up_proj", "down_proj"})}, {}),
    }


def with_head_block(quantized: Path, block: int, folder: Path) -> Path:
    """A view of the checkpoint (its files linked) whose config records another head block: the builder
    then packs the head on that block, rounding the head's stored values again on it."""
    folder.mkdir()
    for f in quantized.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f.resolve())
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"]["head_block_size"] = block
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@click.command()
@params_option
@click.option("--quantized", default="models/quantized", show_default=True)
@click.option("--lora", default="models/lora", show_default=True)
@click.option("--adapter", "name", default=None, help="adapter to measure with (default: the first in params)")
@click.option("--rounds", default=3, show_default=True, help="passes over all variants; medians are reported")
@click.option("--out", default="reports/levers.json", show_default=True)
@stage
def main(params_path, quantized, lora, name, rounds, out):
    params = P.load(params_path)
    name = name or next(iter(params["adapters"]))
    b = params["benchmark"]
    longest = max(b["context_lengths"])
    built, results = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, (opt, session) in variants(params).items():
            onnx = Path(tmp) / variant
            onnx.mkdir()
            opt = dict(opt)
            source = Path(quantized)
            if "head_block_size" in opt:  # the checkpoint as optimize reads it, recording another head block
                source = with_head_block(source, opt.pop("head_block_size"), Path(tmp) / f"{variant}_checkpoint")
            optimize(source, onnx, {**params["optimize"], **opt}, Path(tmp) / "work")
            adapter = export_adapter(Path(lora) / name, onnx, onnx / "adapters" / f"{name}.onnx_adapter")
            if session:
                cfg = json.loads((onnx / "genai_config.json").read_text())
                options = cfg["model"]["decoder"]["session_options"]
                options.update(session)
                for key in [k for k, v in options.items() if v is None]:
                    del options[key]
                (onnx / "genai_config.json").write_text(json.dumps(cfg, indent=4))
            built[variant] = onnx
            r = in_child(context_decode, onnx_dir=str(onnx), adapter=None, adapter_name=name, b=b, context=longest)
            results[variant] = {"weight_mb_per_token": round(weight_bytes_per_token(onnx) / 1e6, 2),
                                "adapter_mb": adapter["adapter_mb"],
                                f"context_{longest}_prefill_tok_s": r["prefill_tok_s"],
                                f"context_{longest}_peak_rss_mb": r["peak_rss_mb"],
                                "runs": []}
        # Rounds over all variants, base and adapter interleaved inside each: the box drifts.
        paired = interleaved({variant: lambda onnx=onnx: in_child(
            paired_decode, onnx_dir=str(onnx), b=b, adapters={name: str(onnx / "adapters" / f"{name}.onnx_adapter")})
            for variant, onnx in built.items()}, rounds)
        for variant, runs in paired.items():
            results[variant]["runs"] = runs
    for variant, row in results.items():
        runs = row.pop("runs")
        row["base_decode_tok_s"] = round(statistics.median(r["base_decode_tok_s"] for r in runs), 1)
        row[f"{name}_decode_tok_s"] = round(statistics.median(r[f"{name}_decode_tok_s"] for r in runs), 1)
        row["adapter_cost_pct"] = round(statistics.median(r[f"{name}_cost_pct"] for r in runs), 2)
        click.echo(f"{variant:>24}: base {row['base_decode_tok_s']} tok/s, +{name} {row[f'{name}_decode_tok_s']} "
                   f"tok/s ({row['adapter_cost_pct']} %), prefill@{longest} "
                   f"{row[f'context_{longest}_prefill_tok_s']:.0f} tok/s, RSS@{longest} "
                   f"{row[f'context_{longest}_peak_rss_mb']} MB")
    write_json(out, {"adapter": name, "rounds": rounds, "benchmark": b, "variants": results})


if __name__ == "__main__":
    main()
