"""`make repro-lab`, last step: the lab run's record in reports/lab/ (card.txt, the stages' metrics, the
params it ran with, summary.json with issue #29's goals); timed_repro has written repro.json and
stage_seconds.json there. See ondevice/measure/lab_report.py."""
import json
import shutil
from pathlib import Path

import click

from ondevice import params as P
from ondevice.atomic import write_json, write_text
from ondevice.measure.lab_report import card, summarize
from ondevice.ship.register import read_metrics


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
@click.option("--metrics-dir", default="metrics", show_default=True)
@click.option("--out", required=True)
def main(params_path, metrics_dir, out):
    out, params = Path(out), P.load(params_path)
    m = read_metrics(Path(metrics_dir), list(params["adapters"]),
                     which=("quantize", "optimize", "evaluate", "benchmark"))
    stages = json.loads((out / "stage_seconds.json").read_text())["stages_s"]
    write_text(out / "card.txt", card())
    for name, data in m.items():
        write_json(out / f"{name}.json", data)
    shutil.copy2(params_path, out / "params.yaml")
    summary = summarize(m, stages)
    write_json(out / "summary.json", summary)
    for key, g in summary["goals"].items():
        click.echo(f"{key}: {g['measured']} (goal {g['goal']}: {'met' if g['met'] else 'missed'})")


if __name__ == "__main__":
    main()
