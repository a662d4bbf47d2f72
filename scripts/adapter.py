"""Stage `adapter@NAME`: one trained LoRA -> a hot-swappable .onnx_adapter for the built base model.

What Olive's ExtractAdapters step produces, but read from the base graph's own LoRA inputs, so the
file's names and shapes match the model it will be loaded into (checked before writing).
"""
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_json
from ondevice.cli import params_option, stage
from ondevice.export.onnx_lora import run


@click.command()
@params_option
@click.option("--adapter", "name", required=True, help="the adapter to export (params.yaml adapters.NAME)")
@click.option("--lora", required=True)
@click.option("--onnx", "onnx_dir", required=True)
@click.option("--out", required=True)
@click.option("--metrics", required=True)
@stage
def main(params_path, name, lora, onnx_dir, out, metrics):
    cfg = P.adapter(P.load(params_path), name)  # an unknown name fails here, in one line
    info = run(Path(lora), Path(onnx_dir), Path(out), cfg)
    write_json(metrics, info)
    click.echo(f"{name}: r={info['rank']}, {info['parameters']} parameters, {info['adapter_mb']} MB -> {out}")


if __name__ == "__main__":
    main()
