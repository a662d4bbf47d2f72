"""Stage `data@NAME`: validate one adapter's task data (JSONL, CSV or Parquet; prompt/response or chat
messages), drop rows that finetune.seq_len would cut before their answer, and split the rest into
train and eval, deterministically."""
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, write_json
from ondevice.cli import params_option, stage
from ondevice.prepare import run


@click.command()
@params_option
@click.option("--adapter", "name", required=True, help="the adapter (params.yaml adapters.NAME) whose data to split")
@click.option("--base", required=True, help="the base model: its tokenizer and template measure each row")
@click.option("--out", required=True)
@click.option("--metrics", required=True)
@stage
def main(params_path, name, base, out, metrics):
    params = P.load(params_path)
    with atomic_dir(out) as tmp:
        result = run(P.adapter(params, name), Path(base), Path(tmp), P.section(params, "data"))
    write_json(metrics, result)
    click.echo(f"{result['rows_train']} train / {result['rows_eval']} eval rows -> {out}")


if __name__ == "__main__":
    main()
