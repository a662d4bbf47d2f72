"""Upload the shipped model (models/onnx, with models/adapters as its adapters/ folder and the model
card as README.md) to Azure ML as a custom_model, like the lab's `az ml model create`."""
import json
import tempfile
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import UserError
from ondevice.cli import params_option, stage
from ondevice.ship import azure, azure_register
from ondevice.ship.register import make_bundle


@click.command()
@params_option
@click.option("--onnx", "onnx_dir", default="models/onnx", show_default=True)
@click.option("--adapters", "adapters_dir", default="models/adapters", show_default=True)
@click.option("--metrics-dir", default="metrics", show_default=True)
@click.option("--dry-run", is_flag=True, help="print the asset that would be created and upload nothing")
@click.option("--next-version", is_flag=True, help="if register.version exists, take the next free version")
@click.option("--card", default="reports/model_card.md", show_default=True,
              help="the model card (register stage), shipped as README.md")
@click.option("--receipt", default="reports/azure_receipt.json", show_default=True)
@stage
def main(params_path, onnx_dir, adapters_dir, metrics_dir, card, dry_run, next_version, receipt):
    params = P.load(params_path)
    if not Path(card).is_file():
        raise UserError(f"model card {card} missing; run `dvc repro -s register` (it writes the card)")
    azure_register.model_asset(Path(onnx_dir), params, Path(metrics_dir))  # fails early: no model, or a metric missing
    ws = None if dry_run else azure.workspace(params)
    with tempfile.TemporaryDirectory(dir=Path(onnx_dir).parent) as tmp:
        bundle = make_bundle(Path(onnx_dir), Path(adapters_dir), Path(tmp) / "model", Path(card))
        asset = azure_register.model_asset(bundle, params, Path(metrics_dir))
        if dry_run:
            click.echo(json.dumps(azure_register.describe(asset, bundle), indent=2))
            return
        version = azure_register.upload(azure.client(ws), asset, next_version)
    info = {"name": asset.name, "version": version, "workspace": ws["workspace"],
            "resource_group": ws["resource_group"], "tags": asset.tags}
    Path(receipt).parent.mkdir(parents=True, exist_ok=True)
    Path(receipt).write_text(json.dumps(info, indent=2) + "\n")
    click.echo(f"registered {asset.name}:{version} in {ws['workspace']}")


if __name__ == "__main__":
    main()
