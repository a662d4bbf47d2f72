"""Stage `data@NAME`: validate one adapter's task JSONL and split it into train and eval, deterministically."""
import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, write_json
from ondevice.cli import params_option, stage
from ondevice.data import read_rows, split, stats, write_jsonl


@click.command()
@params_option
@click.option("--adapter", "name", required=True, help="the adapter (params.yaml adapters.NAME) whose data to split")
@click.option("--out", required=True)
@click.option("--metrics", required=True)
@stage
def main(params_path, name, out, metrics):
    params = P.load(params_path)
    d, path = params["data"], P.adapter_config(params, name)["data"]
    rows, warnings = read_rows(path, f"adapters.{name}.data")
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    train, evals = split(rows, d["eval_fraction"], d["seed"])
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "eval.jsonl", evals)
    write_json(metrics, stats(train, evals, warnings))
    click.echo(f"{len(train)} train / {len(evals)} eval rows -> {out}")


if __name__ == "__main__":
    main()
