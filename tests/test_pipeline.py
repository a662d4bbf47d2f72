"""The real pipeline: `dvc repro` in a throwaway git+dvc copy of this repository, on a tiny model."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, write_params

ADAPTERS = ["travel", "garden"]  # prompt/response rows and chat-format rows (system prompts, multi-turn);
# params.yaml's cooking is dropped: a third adapter adds four stages of start-up and tests nothing new
STAGES = ["model", "quantize", "reference", "optimize", "evaluate", "benchmark", "register"] + \
    [f"{stage}@{name}" for stage in ("data", "finetune", "float_lora", "adapter") for name in ADAPTERS]
SHARED = ["evaluate", "benchmark", "register"]  # stages that cover every adapter
TINY_PARAMS = {
    "quantize": {"calibration_samples": 16, "calibration_seq_len": 64, "awq_grid": 5},
    "finetune": {"r": 4, "alpha": 8, "max_steps": 2, "batch_size": 4, "seq_len": 96},
    "optimize": {"int4_accuracy_level": 0},
    "evaluate": {"max_rows": 6, "generate_rows": 1, "max_new_tokens": 8},
    "benchmark": {"prompt_tokens": 16, "new_tokens": 8, "runs": 1, "warmup": 0, "torch_baseline": False,
                  "switches": 4, "context_lengths": [16, 32], "thread_counts": [1], "sweep_new_tokens": 4},
}


def sh(cmd, cwd, env):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def ran(output):
    return re.findall(r"Running stage '([^']+)'", output)


def set_params(repo, **changes):
    write_params(repo / "params.yaml", changes, source=repo / "params.yaml")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_dir):
    repo = tmp_path_factory.mktemp("pipeline")
    for item in ("dvc.yaml", "params.yaml", "scripts", "ondevice", "data/travel_qa.jsonl", "data/garden_chat.jsonl"):
        src, dst = ROOT / item, repo / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    tiny = {f"{section}.{key}": v for section, values in TINY_PARAMS.items() for key, v in values.items()}
    adapters = yaml.safe_load((ROOT / "params.yaml").read_text())["adapters"]
    set_params(repo, **tiny, **{"model.source": str(tiny_dir), "adapters": {n: adapters[n] for n in ADAPTERS}})
    env = {**os.environ, "PYTHONPATH": str(repo), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git init -q && dvc init -q && dvc config core.autostage true", repo, env)
    return repo, env


def test_repro_runs_every_stage_then_is_a_noop(repo):
    repo, env = repo
    first = sh("dvc repro", repo, env)
    assert sorted(ran(first)) == sorted(STAGES)
    headline = {"model": "parameters", "quantize": "seconds", "optimize": "lora_nodes", "data/travel": "rows_train",
                "finetune/garden": "train_loss_last", "adapter/garden": "parameters"}
    for name, key in headline.items():  # each stage wrote its own numbers, not just a file
        assert json.loads((repo / "metrics" / f"{name}.json").read_text())[key] > 0, name
    evaluation = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert evaluation["quantization"]["algorithm"] == "awq"
    for split in ADAPTERS:  # the cross matrix: every split scored by base and by every adapter
        assert {"quantized_base", "float_base", *(f"adapter_{n}" for n in ADAPTERS)} <= set(evaluation[f"on_{split}"])
        assert evaluation[f"on_{split}"]["float_lora"]["perplexity"] > 1  # the float LoRA, for int4's gap
    bench = json.loads((repo / "metrics" / "benchmark.json").read_text())
    assert bench["switching"]["adapters_loaded"] == 2 and set(bench["adapter_decode_cost_pct"]) == set(ADAPTERS)
    for plot in ("engines", "context", "threads"):
        assert (repo / f"plots/benchmark/{plot}.csv").exists()
    for name in ADAPTERS:
        assert (repo / f"models/adapters/{name}.onnx_adapter").exists()
        # DVCLive: a loss per step (dvc plots) and the last step's values (dvc exp show)
        steps = (repo / f"dvclive/finetune/{name}/plots/metrics/loss.tsv").read_text().splitlines()
        summary = json.loads((repo / f"dvclive/finetune/{name}/metrics.json").read_text())
        assert steps[0] == "step\tloss" and len(steps) == 1 + summary["step"] + 1 and summary["lr"] > 0
    manifest = json.loads((repo / "reports/manifest.json").read_text())
    assert {"adapters/travel.onnx_adapter", "adapters/garden.onnx_adapter", "model.onnx"} <= set(manifest["files"])
    assert manifest["packages"]["onnxruntime-genai"] and manifest["adapters"] == sorted(ADAPTERS)
    assert ran(sh("dvc repro", repo, env)) == []
    sh("git add -A && git commit -qm run1", repo, env)


def test_benchmark_params_rerun_only_benchmark_and_the_card(repo):
    repo, env = repo
    set_params(repo, **{"benchmark.new_tokens": 6})
    assert ran(sh("dvc repro", repo, env)) == ["benchmark", "register"]  # the model card quotes the speed
    assert json.loads((repo / "metrics/benchmark.json").read_text())["ort_int4"]["generated"] == 6
    # Two runs side by side (HEAD and this workspace): headline figures only, readable in 200 columns
    header = sh("dvc exp show --only-changed --csv --no-pager", repo, env).splitlines()[0].split(",")
    assert len(header) <= 25, header
    table = sh("dvc exp show --only-changed --no-pager", repo, {**env, "COLUMNS": "200"})
    assert "benchmark.new_tokens" in table and "decode_tok_s" in table, table
    assert max(len(line) for line in table.splitlines()) <= 200 and "…" not in table.splitlines()[1], table


def test_same_seed_retrain_gives_the_same_eval_loss(repo):
    repo, env = repo
    before = json.loads((repo / "metrics/evaluate.json").read_text())
    assert ran(sh("dvc repro -f -s finetune@travel", repo, env)) == ["finetune@travel"]
    sh("dvc repro", repo, env)  # reruns downstream only if the adapter bytes differ
    after = json.loads((repo / "metrics/evaluate.json").read_text())
    key = ("on_travel", "adapter_travel", "loss")
    assert after[key[0]][key[1]][key[2]] == pytest.approx(before[key[0]][key[1]][key[2]], abs=1e-4)


def test_an_adapter_added_in_an_experiment_builds_only_its_own_stages_and_diffs(repo):
    repo, env = repo
    shutil.copy2(repo / "data/travel_qa.jsonl", repo / "data/city_qa.jsonl")
    sh("git add -A && git commit -qm 'city data'", repo, env)
    set_params(repo, **{"adapters.city": {"data": "data/city_qa.jsonl", "r": 2}})  # the experiment's change
    stages = ran(sh("dvc exp run -n city", repo, env))
    # a new adapter's own stages and the shared ones rerun, in the experiment's workspace; no other adapter's
    assert stages[0] == "data@city" and stages[-3:] == SHARED, stages
    assert set(stages[1:-3]) == {"finetune@city", "float_lora@city", "adapter@city"}, stages
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert "adapter_city" in evaluation["on_travel"] and "on_city" in evaluation
    assert json.loads((repo / "metrics/benchmark.json").read_text())["switching"]["adapters_loaded"] == 3
    table = sh("dvc exp show --md --no-pager --only-changed", repo, env)
    header = table.splitlines()[0]
    assert "city" in table.split("\n", 2)[2], table
    assert "city.int4_adapter_loss" in header and "adapters.city.r" in header.replace("params.yaml:", ""), header
    # the experiment is applied to the workspace: diffs against HEAD name the adapter's key and its loss
    diff = sh("dvc metrics diff --md", repo, env)
    assert "dvclive/evaluate/metrics.json" in diff and "city.int4_adapter_loss" in diff, diff
    assert "adapters.city.r" in sh("dvc params diff", repo, env)


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
