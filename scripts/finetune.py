"""Stage `finetune@NAME`: one adapter's LoRA on the shared quantized base; loss and learning rate per
step logged with DVCLive (dvc plots, and the last step in dvc exp show).

Stage `float_lora@NAME` runs it with --float-base: the same LoRA (data, steps, seed) on the float
model, so evaluate can show what int4 costs after finetuning."""
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import atomic_dir, write_json
from ondevice.cli import params_option, stage
from ondevice.finetune import run
from ondevice.live import live


@click.command()
@params_option
@click.option("--adapter", "name", required=True, help="the adapter to train (params.yaml adapters.NAME)")
@click.option("--base", required=True, help="the model to train on")
@click.option("--float-base", is_flag=True, help="the model is the float base (the float_lora stage), not int4")
@click.option("--train", "train_path", required=True)
@click.option("--out", required=True)
@click.option("--metrics", required=True)
@click.option("--live", "live_dir", required=True)
@stage
def main(params_path, name, base, float_base, train_path, out, metrics, live_dir):
    cfg = P.adapter(P.load(params_path), name)
    with live(live_dir) as session, atomic_dir(out) as tmp:
        def log(step: dict) -> None:
            session.log_metric("loss", step["loss"])
            session.log_metric("lr", step["lr"])
            session.next_step()

        summary = run(Path(base), Path(train_path), tmp, cfg, float_base, log)
    write_json(metrics, summary)
    click.echo(f"{name}: LoRA r={cfg.r} on the {'float' if float_base else 'int4'} base: loss "
               f"{summary['train_loss_first']} -> {summary['train_loss_last']} in {summary['seconds']} s -> {out}")


if __name__ == "__main__":
    main()
