"""Stage `data@NAME`: validate one adapter's task data (JSONL, CSV or Parquet; prompt/response or chat
messages), drop rows that finetune.seq_len would cut before their answer, and split the rest into
train and eval, deterministically."""
import click
from transformers import AutoTokenizer

from ondevice import params as P
from ondevice.atomic import atomic_dir, write_json
from ondevice.cli import params_option, stage
from ondevice.data import read_rows, split, stats, write_jsonl
from ondevice.text import keep_answerable


@click.command()
@params_option
@click.option("--adapter", "name", required=True, help="the adapter (params.yaml adapters.NAME) whose data to split")
@click.option("--base", required=True, help="the base model: its tokenizer and template measure each row")
@click.option("--out", required=True)
@click.option("--metrics", required=True)
@stage
def main(params_path, name, base, out, metrics):
    params = P.load(params_path)
    d, cfg = params["data"], P.adapter_config(params, name)
    rows, warnings = read_rows(cfg["data"], f"adapters.{name}.data")
    rows, dropped = keep_answerable(AutoTokenizer.from_pretrained(base), cfg["template"], rows, cfg["seq_len"],
                                    cfg["data"])
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if dropped:
        click.echo(f"warning: {cfg['data']}: {dropped} of {len(rows) + dropped} rows leave no response token within "
                   f"finetune.seq_len={cfg['seq_len']} tokens and were dropped; raise finetune.seq_len or shorten "
                   "their prompts", err=True)
    train, evals = split(rows, d["eval_fraction"], d["seed"])
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "eval.jsonl", evals)
    write_json(metrics, stats(train, evals, warnings, dropped))
    click.echo(f"{len(train)} train / {len(evals)} eval rows -> {out}")


if __name__ == "__main__":
    main()
