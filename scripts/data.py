"""Stage `data`: validate the task JSONL and split it into train and eval, deterministically."""
import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, write_json
from ondevice.cli import params_option, stage
from ondevice.data import read_rows, split, stats, write_jsonl


@click.command()
@params_option
@click.option("--out", default="data/prepared", show_default=True)
@click.option("--metrics", default="metrics/data.json", show_default=True)
@stage
def main(params_path, out, metrics):
    d = P.load(params_path)["data"]
    rows, warnings = read_rows(d["path"])
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
