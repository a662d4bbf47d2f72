"""The real pipeline: `dvc repro` in a throwaway git+dvc copy of this repository, on a tiny model."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

STAGES = ["model", "data", "quantize", "finetune", "optimize", "evaluate", "benchmark", "register"]
TINY_PARAMS = {
    "quantize": {"calibration_samples": 16, "calibration_seq_len": 64, "awq_grid": 5},
    "finetune": {"r": 4, "alpha": 8, "max_steps": 2, "batch_size": 4, "seq_len": 96},
    "optimize": {"int4_accuracy_level": 0},
    "evaluate": {"max_rows": 6, "generate_rows": 1, "max_new_tokens": 8},
    "benchmark": {"prompt_tokens": 16, "new_tokens": 8, "runs": 1, "warmup": 0, "torch_baseline": False},
}


def sh(cmd, cwd, env):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def ran(output):
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def set_params(repo, **changes):
    path = repo / "params.yaml"
    p = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        p[section][key] = value
    path.write_text(yaml.safe_dump(p, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_dir):
    repo = tmp_path_factory.mktemp("pipeline")
    for item in ("dvc.yaml", "params.yaml", "scripts", "ondevice", "data/travel_qa.jsonl"):
        src, dst = ROOT / item, repo / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["model"]["source"] = str(tiny_dir)
    for section, values in TINY_PARAMS.items():
        p[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(repo), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git init -q && dvc init -q && dvc config core.autostage true", repo, env)
    return repo, env


def test_repro_runs_every_stage_then_is_a_noop(repo):
    repo, env = repo
    first = sh("dvc repro", repo, env)
    assert ran(first) == STAGES
    for name in ("model", "data", "quantize", "finetune", "optimize", "evaluate", "benchmark"):
        assert json.loads((repo / "metrics" / f"{name}.json").read_text())
    evaluation = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert evaluation["quantization"]["algorithm"] == "awq"
    assert (repo / "models/onnx/adapters/travel.onnx_adapter").exists()
    assert (repo / "plots/train_loss.csv").read_text().startswith("step,loss,lr")
    manifest = json.loads((repo / "reports/manifest.json").read_text())
    assert "adapters/travel.onnx_adapter" in manifest["files"] and manifest["packages"]["onnxruntime-genai"]
    assert ran(sh("dvc repro", repo, env)) == []
    sh("git add -A && git commit -qm run1", repo, env)


def test_benchmark_params_rerun_only_benchmark(repo):
    repo, env = repo
    set_params(repo, **{"benchmark.new_tokens": 6})
    assert ran(sh("dvc repro", repo, env)) == ["benchmark"]
    assert json.loads((repo / "metrics/benchmark.json").read_text())["ort_int4"]["generated"] == 6


def test_same_seed_retrain_gives_the_same_eval_loss(repo):
    repo, env = repo
    before = json.loads((repo / "metrics/evaluate.json").read_text())
    assert ran(sh("dvc repro -f -s finetune", repo, env)) == ["finetune"]
    sh("dvc repro", repo, env)  # reruns downstream only if the adapter bytes differ
    after = json.loads((repo / "metrics/evaluate.json").read_text())
    assert after["quantized_adapter"]["loss"] == pytest.approx(before["quantized_adapter"]["loss"], abs=1e-4)


def test_lora_rank_change_reruns_only_downstream_and_diffs(repo):
    repo, env = repo
    set_params(repo, **{"finetune.r": 8})
    assert ran(sh("dvc repro", repo, env)) == ["finetune", "optimize", "evaluate", "benchmark", "register"]
    diff = sh("dvc metrics diff --md", repo, env)
    assert "metrics/evaluate.json" in diff and "quantized_adapter.loss" in diff
    params_diff = sh("dvc params diff", repo, env)
    assert "finetune.r" in params_diff


def test_exp_run_and_exp_show_compare_runs(repo):
    repo, env = repo
    sh("git add -A && (git diff --cached --quiet || git commit -qm r8)", repo, env)
    out = sh("dvc exp run -n rank2 -S finetune.r=2", repo, env)
    assert ran(out) == ["finetune", "optimize", "evaluate", "benchmark", "register"]
    table = sh("dvc exp show --md --no-pager --only-changed", repo, env)
    header = table.splitlines()[0]
    assert "rank2" in table, table
    assert "quantized_adapter" in table and "finetune.r" in table.replace("params.yaml:", ""), header


def test_dvc_push_pull_round_trip_restores_the_model_byte_for_byte(repo, tmp_path):
    import hashlib

    repo, env = repo

    def digest(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = digest(repo / "models/onnx")
    sh(f"dvc remote add -f -d local {tmp_path / 'remote'} && dvc push -q", repo, env)
    shutil.rmtree(repo / "models/onnx")
    sh("dvc cache dir {} && dvc pull -q models/onnx".format(tmp_path / "fresh-cache"), repo, env)
    assert digest(repo / "models/onnx") == before
