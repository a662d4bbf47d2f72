"""Upload models/onnx (adapters included) to Azure ML as a custom_model, like `az ml model create`."""
import json
from pathlib import Path

import click

from ondevice import azure
from ondevice import params as P
from ondevice.cli import params_option, stage


@click.command()
@params_option
@click.option("--model", "model_dir", default="models/onnx", show_default=True)
@click.option("--metrics-dir", default="metrics", show_default=True)
@click.option("--dry-run", is_flag=True, help="print the asset that would be created and upload nothing")
@click.option("--next-version", is_flag=True, help="if register.version exists, take the next free version")
@click.option("--receipt", default="reports/azure_receipt.json", show_default=True)
@stage
def main(params_path, model_dir, metrics_dir, dry_run, next_version, receipt):
    params = P.load(params_path)
    asset = azure.model_asset(Path(model_dir), params, Path(metrics_dir))
    if dry_run:
        click.echo(json.dumps(azure.describe(asset, Path(model_dir)), indent=2))
        return
    ws = azure.workspace(params)
    version = azure.upload(azure.client(ws), asset, next_version)
    info = {"name": asset.name, "version": version, "workspace": ws["workspace"],
            "resource_group": ws["resource_group"], "tags": asset.tags}
    Path(receipt).parent.mkdir(parents=True, exist_ok=True)
    Path(receipt).write_text(json.dumps(info, indent=2) + "\n")
    click.echo(f"registered {asset.name}:{version} in {ws['workspace']}")


if __name__ == "__main__":
    main()
