"""`make repro`: `dvc repro` (`--exp`: `dvc exp run`, for profiles given as -S), each stage timed;
per-stage seconds in reports/stage_seconds.json, the headline (the whole pipeline's seconds, the
machine) in metrics/repro.json, a metric in dvc.yaml.

A stage's seconds are those of its last run on this machine; `pipeline_s` sums them, so it is what
`make repro` takes from a fresh clone even after runs that rebuilt only part of the pipeline.
Times from another CPU are dropped, not mixed in.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from ondevice.measure.benchmark_cuda import gpu_name
from ondevice.ship.model_card import cpu_model

RUNNING = re.compile(r"^Running stage '([^']+)'")


def machine() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    cpu = f"{cpu_model()}, {os.cpu_count()} CPUs, {isa}"
    # the GPU path's stage times depend on the card first
    return f"{gpu_name()}, {cpu}" if shutil.which("nvidia-smi") else cpu


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--metrics", default="metrics/repro.json", show_default=True)
@click.option("--stages", "stages_path", default="reports/stage_seconds.json", show_default=True)
@click.option("--exp", is_flag=True, help="`dvc exp run` (takes -S overrides) instead of `dvc repro`")
@click.argument("dvc_args", nargs=-1, type=click.UNPROCESSED)
def main(metrics, stages_path, exp, dvc_args):
    path = Path(stages_path)
    record = json.loads(path.read_text()) if path.exists() else {}
    here = machine()
    stages = record.get("stages_s", {}) if record.get("machine") == here else {}
    t_start = time.perf_counter()
    current, t_stage = None, t_start
    command = ["dvc", "exp", "run"] if exp else ["dvc", "repro"]
    proc = subprocess.Popen([*command, *dvc_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ran = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        match = RUNNING.match(line)
        if match:
            now = time.perf_counter()
            if current:
                stages[current] = round(now - t_stage, 1)
            current, t_stage = match.group(1), now
            ran.append(current)
    rc = proc.wait()
    if rc != 0:  # a failed stage's time means nothing; the earlier ones stay unrecorded too
        sys.exit(rc)
    if current:
        stages[current] = round(time.perf_counter() - t_stage, 1)
    if ran and "--dry" not in dvc_args:  # a dry run prints the stages without running them
        headline = {"pipeline_s": round(sum(stages.values()), 1), "last_run_s": round(time.perf_counter() - t_start, 1),
                    "machine": here}
        for file, data in ((path, {"machine": here, "stages_s": stages, "last_run_stages": ran}),
                           (Path(metrics), headline)):
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(data, indent=2) + "\n")
        click.echo(f"{len(ran)} stage(s) ran in {headline['last_run_s']} s; the whole pipeline takes "
                   f"{headline['pipeline_s']} s on this machine ({metrics}, per stage in {stages_path})")


if __name__ == "__main__":
    main()
