"""`make repro` records each stage's seconds in metrics/repro.json, keeping earlier stages' times."""
import json
import os
import subprocess
import sys

from conftest import ROOT

FAKE_DVC = """#!/bin/sh
for s in $STAGES; do echo "Running stage '$s':"; sleep 0.3; done
exit ${FAKE_RC:-0}
"""


def run(tmp_path, stages, rc=0, *dvc_args):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "dvc").write_text(FAKE_DVC)
    (bin_dir / "dvc").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STAGES": stages, "FAKE_RC": str(rc),
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "scripts/timed_repro.py"), "--metrics", str(tmp_path / "repro.json"),
           "--stages", str(tmp_path / "stages.json"), "-s", "x", *dvc_args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def test_stage_times_accumulate_into_the_whole_pipelines_time(tmp_path):
    assert run(tmp_path, "model quantize").returncode == 0
    first = json.loads((tmp_path / "stages.json").read_text())
    assert set(first["stages_s"]) == {"model", "quantize"} and all(0.25 < s < 5 for s in first["stages_s"].values())
    assert run(tmp_path, "quantize evaluate").returncode == 0  # a partial rerun keeps model's time
    second = json.loads((tmp_path / "stages.json").read_text())
    assert set(second["stages_s"]) == {"model", "quantize", "evaluate"}
    assert second["stages_s"]["model"] == first["stages_s"]["model"]
    assert second["last_run_stages"] == ["quantize", "evaluate"] and "CPUs" in second["machine"]
    headline = json.loads((tmp_path / "repro.json").read_text())
    assert headline["pipeline_s"] == round(sum(second["stages_s"].values()), 1) and set(headline) == {
        "pipeline_s", "last_run_s", "machine"}


def test_a_failed_run_leaves_the_record_alone_and_fails(tmp_path):
    assert run(tmp_path, "model").returncode == 0
    files = (tmp_path / "repro.json", tmp_path / "stages.json")
    before = [f.read_text() for f in files]
    proc = run(tmp_path, "quantize", rc=3)
    assert proc.returncode == 3 and [f.read_text() for f in files] == before


def test_a_dry_run_records_nothing(tmp_path):
    """`make repro ARGS=--dry` lists the stages in no time at all: those are not their seconds."""
    assert run(tmp_path, "model quantize", 0, "--dry").returncode == 0
    assert not (tmp_path / "stages.json").exists() and not (tmp_path / "repro.json").exists()
