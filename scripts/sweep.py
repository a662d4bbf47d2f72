"""Several variants on this machine through DVC's queue: one `dvc exp run --queue` per `-S` (several
space-separated overrides in one `-S` go into the same experiment), then `dvc queue start -j JOBS`
with the cores split between the workers (ondevice/threads.py), then wait and show the results."""
import os
import re
import subprocess
import time

import click

from ondevice import params as P
from ondevice import threads
from ondevice.atomic import UserError
from ondevice.cli import params_option, stage
from ondevice.ship import variants

DONE = ("Success", "Failed")


def dvc(*args: str, env=None) -> str:
    out = subprocess.run(["dvc", *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise UserError(f"dvc {' '.join(args)} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return out.stdout


def queue_status() -> tuple[dict[str, str], int]:
    """`dvc queue status` as {experiment name: Queued | Running | Success | Failed}, and the live workers."""
    rows, workers = {}, 0
    for line in dvc("queue", "status").splitlines():
        words = line.split()
        if len(words) >= 4 and words[-1] in ("Queued", "Running", *DONE) and words[0] != "Task":
            rows[words[1]] = words[-1]
        m = re.search(r"Worker status: (\d+) active, (\d+) idle", line)
        if m:
            workers = int(m[1]) + int(m[2])
    return rows, workers


@click.command()
@params_option
@click.option("-S", "--set-param", "sets", multiple=True, required=True, metavar="KEY=VALUE[ KEY=VALUE...]",
              help="one experiment per -S")
@click.option("-j", "--jobs", default=2, show_default=True, help="experiments run at once (queue workers)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for the queue, then show the table")
@click.option("--poll", default=5.0, show_default=True, help="seconds between looks at the queue")
@stage
def main(params_path, sets, jobs, wait, poll):
    runs = variants.variants(sets, P.load(params_path))  # every variant checked before any is queued
    names = []
    for overrides in runs:
        out = dvc("exp", "run", "--queue", *(a for o in overrides for a in ("-S", o)))
        names += re.findall(r"Queued experiment '([^']+)'", out)
    split = threads.environ(jobs)
    dvc("queue", "start", "-j", str(jobs), env={**os.environ, **split})
    click.echo(f"queued {', '.join(names)}; {jobs} at a time, {split[threads.ENV]} thread(s) each "
               f"({', '.join(f'{k}={v}' for k, v in split.items())})")
    if not wait:
        click.echo("follow with `dvc queue status`, `dvc queue logs NAME`; compare with `dvc exp show`")
        return
    idle_since = time.monotonic()
    while True:
        rows, workers = queue_status()
        status = {n: rows.get(n, "Failed") for n in names}  # a task gone from the queue did not succeed
        if all(s in DONE for s in status.values()):
            break
        if workers or "Running" in status.values():
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 60:
            raise UserError("the queue's workers stopped with experiments still queued; `dvc queue start -j "
                            f"{jobs}` resumes them")
        time.sleep(poll)
    failed = [n for n, s in status.items() if s == "Failed"]
    if failed:
        raise UserError(f"experiment(s) {', '.join(failed)} failed; see `dvc queue logs {failed[0]}`")
    click.echo(dvc("exp", "show", "--no-pager", "--only-changed", "--md"))


if __name__ == "__main__":
    main()
