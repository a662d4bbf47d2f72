"""Sweeps on one machine: `scripts/sweep.py` (`make sweep`) queues one experiment per -S on DVC's queue
and runs them `-j` at a time with the cores split between the workers."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline import TINY_PARAMS, set_params
from test_pipeline import sh as pipeline_sh

from conftest import ROOT
from ondevice import threads
from ondevice.atomic import UserError

SWEEP = str(ROOT / "scripts/sweep.py")


def env_for(repo):
    return {**os.environ, "PYTHONPATH": str(repo), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def copy_in(repo: Path, *items: str) -> Path:
    """These files and folders of this repository, at the same paths under `repo`."""
    for item in items:
        (repo / item).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy2)(ROOT / item, repo / item)
    return repo


def sh(cmd, repo):
    return pipeline_sh(cmd, repo, env_for(repo))


def exp_rows(repo) -> dict:
    """`dvc exp show --json`: {experiment name: {params, metrics}} of every experiment shown."""
    shown = json.loads(sh("dvc exp show --json --no-pager", repo))
    rows = {}
    for exp in (e for baseline in shown for e in baseline.get("experiments") or []):
        for rev in exp["revs"]:
            data = rev["data"]
            # a declared file the copy lacks (metrics/repro.json) comes back as an error entry
            metrics = {k: v["data"] for k, v in (data.get("metrics") or {}).items() if "data" in v}
            rows[rev["name"]] = {"params": data["params"]["params.yaml"]["data"], "metrics": metrics}
    return rows


def test_cores_are_split_between_concurrent_runs():
    assert threads.per_job(2, cpus=2) == 1 and threads.per_job(3, cpus=8) == 2 and threads.per_job(4, cpus=2) == 1
    assert threads.environ(2, cpus=16) == {"ONDEVICE_THREADS": "8", "OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8"}
    assert threads.count({}) == 0 and threads.count({"ONDEVICE_THREADS": "3"}) == 3
    with pytest.raises(UserError, match=r"\$ONDEVICE_THREADS='all' must be a whole number of threads"):
        threads.count({"ONDEVICE_THREADS": "all"})


def test_queued_experiments_get_their_share_of_the_cores(tmp_path):
    """Two variants through the queue, two workers: each stage sees the split thread count (and torch obeys)."""
    repo = copy_in(tmp_path / "repo", "params.yaml")
    (repo / "probe.py").write_text(
        "import json, os, torch, yaml\nr = yaml.safe_load(open('params.yaml'))['finetune']['r']\n"
        "json.dump({'r': r, 'torch_threads': torch.get_num_threads(), "
        "'ondevice_threads': int(os.environ.get('ONDEVICE_THREADS', 0))}, open('probe.json', 'w'))\n")
    (repo / "dvc.yaml").write_text("stages:\n  probe:\n    cmd: python probe.py\n    deps: [probe.py]\n"
                                   "    params: [finetune]\n    metrics: [{probe.json: {cache: false}}]\n")
    sh("git init -q && dvc init -q && dvc config core.autostage true && dvc repro -q && git add -A && "
       "git commit -qm base", repo)
    out = sh([sys.executable, SWEEP, "-S", "finetune.r=4", "-S", "finetune.r=8 finetune.alpha=16", "-j", "2",
              "--poll", "1"], repo)
    share = threads.per_job(2)
    assert f"2 at a time, {share} thread(s) each" in out
    rows = exp_rows(repo)
    probes = sorted((r["metrics"]["probe.json"]["r"], r["metrics"]["probe.json"]["torch_threads"],
                     r["metrics"]["probe.json"]["ondevice_threads"]) for r in rows.values())
    assert probes == [(4, share, share), (8, share, share)]
    assert sorted(r["params"]["finetune"]["alpha"] for r in rows.values()) == [16, 32]


def test_a_bad_variant_is_refused_before_anything_is_queued(tmp_path):
    repo = copy_in(tmp_path / "repo", "params.yaml")
    out = subprocess.run([sys.executable, SWEEP, "-S", "finetune.r=8", "-S", "finetune.r=0"], cwd=repo,
                         env=env_for(repo), capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: params.yaml: finetune.r=0 is below the minimum 1"]


@pytest.mark.slow  # two whole tiny pipelines through DVC's queue: 6 minutes on a 2-core box (`make test-all`)
def test_two_ranks_queued_on_the_tiny_pipeline_both_show_in_exp_show(tmp_path, tiny_dir):
    """The real pipeline (tiny model, one adapter): `dvc repro`, then two finetune.r variants on the queue."""
    repo = copy_in(tmp_path / "repo", "dvc.yaml", "params.yaml", "scripts", "ondevice", "data/travel_qa.jsonl")
    tiny = {f"{section}.{key}": value for section, values in TINY_PARAMS.items() for key, value in values.items()}
    set_params(repo, **tiny, **{"model.source": str(tiny_dir), "adapters": {"travel": {"data": "data/travel_qa.jsonl"}},
                                "benchmark.profile": False})
    set_params(repo, **{"reference.algorithms": []})  # a second quantization, not needed here
    sh("git init -q && dvc init -q && dvc config core.autostage true && dvc repro -q && git add -A && "
       "git commit -qm base", repo)
    out = sh([sys.executable, SWEEP, "-S", "finetune.r=2", "-S", "finetune.r=8", "-j", "2", "--poll", "2"], repo)
    assert "queued" in out and "finetune.r" in out
    rows = exp_rows(repo)
    assert sorted(r["params"]["finetune"]["r"] for r in rows.values()) == [2, 8]
    losses = [r["metrics"]["dvclive/evaluate/metrics.json"]["travel"]["int4_adapter_loss"] for r in rows.values()]
    assert all(loss > 0 for loss in losses) and losses[0] != losses[1]  # each ran its own rank
