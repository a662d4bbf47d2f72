"""Where an adapter's decode time goes on the shipped model: onnxruntime's profile through
onnxruntime-genai (base vs adapter) and onnxruntime's Run with the adapter fed from host or GPU memory.

Not a DVC stage (a diagnosis, like levers.py): `make adapter-cost` after `make repro` or
`make repro-gpu`; writes reports/adapter_cost.json. The README's "GPU path" quotes an H200 run.
"""
import tempfile
from pathlib import Path

import click

from ondevice.atomic import UserError, write_json
from ondevice.cli import stage
from ondevice.measure.adapter_cost import adapter_cost


@click.command()
@click.option("--onnx-dir", default="models/onnx", show_default=True)
@click.option("--adapter", default="models/adapters/travel.onnx_adapter", show_default=True)
@click.option("--out", default="reports/adapter_cost.json", show_default=True)
@stage
def main(onnx_dir, adapter, out):
    needed = {Path(onnx_dir) / "model.onnx": "optimize", Path(adapter): f"adapter@{Path(adapter).stem}"}
    for path, stage_name in needed.items():
        if not path.exists():
            raise UserError(f"{path} missing; run `dvc repro {stage_name}`")
    with tempfile.TemporaryDirectory() as work:
        result = adapter_cost(Path(onnx_dir), Path(adapter), Path(work))
    write_json(out, result)
    added = result["adapter_adds_us"]
    click.echo(f"adapter adds {added['run_us']} us a decode step: {added['in_nodes_us']} in nodes, "
               f"{added['outside_nodes_us']} outside them; onnxruntime Run, ms a step: "
               f"{result['onnxruntime_run']['step_ms']} -> {out}")


if __name__ == "__main__":
    main()
