"""ondevice/measure/adapter_cost.py: the diagnosis behind the adapter cost on CUDA, run here on the CPU build."""
import json
import subprocess
import sys

from conftest import ROOT
from ondevice.measure.adapter_cost import adapter_cost, summarize_profile


def _event(name, ts, dur, cat="Node", op=None, provider="CUDAExecutionProvider"):
    args = {"op_name": op, "provider": provider} if op else {}
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "args": args}


def test_profile_summary_splits_each_decode_step_into_nodes_and_the_rest(tmp_path):
    """One prefill (long) and 6 decode steps; the first 4 decode steps are warm-up and skipped."""
    events = [_event("model_run", 0, 5000, cat="Session"), _event("a_kernel_time", 10, 4000, op="MatMulNBits")]
    for k in range(6):
        t = 10_000 + 1000 * k
        events += [_event("model_run", t, 500 + k, cat="Session"),
                   _event(f"m{k}_kernel_time", t + 1, 100, op="MatMul"),
                   _event(f"m{k}_fence_before", t + 1, 7, op="MatMul"),  # not a kernel: ignored
                   _event(f"g{k}_kernel_time", t + 200, 50, op="Gather", provider="CPUExecutionProvider")]
    (tmp_path / "p.json").write_text(json.dumps(events))
    s = summarize_profile(tmp_path / "p.json")
    assert s["decode_steps"] == 2 and s["run_us"] == 504.5 and s["in_nodes_us"] == 150
    assert s["outside_nodes_us"] == 354.5 and s["nodes_per_step"] == 2
    assert s["ops_us_per_step"] == {"MatMul@CUDA": 100, "Gather@CPU": 50}


def test_adapter_cost_profiles_the_shipped_build_with_and_without_its_adapter(onnx_dir, tmp_path):
    result = adapter_cost(onnx_dir, onnx_dir / "adapters" / "travel.onnx_adapter", tmp_path)
    for run in (result["base"], result["adapter"]):
        assert run["decode_steps"] > 10 and 0 < run["in_nodes_us"] < run["run_us"]
        assert any(op.startswith("MatMulNBits@CPU") for op in run["ops_us_per_step"])
        assert run["nodes_per_step"] == result["base"]["nodes_per_step"]  # LoRA nodes run in both
    steps = result["onnxruntime_run"]["step_ms"]
    assert set(steps) == {"no_lora_feed", "lora_from_host"} and min(steps.values()) > 0  # a CPU build: no GPU feed
    assert result["onnxruntime_run"]["adapter_mb"] > 0


def test_adapter_cost_names_a_missing_adapter_before_any_work(onnx_dir, tmp_path):
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, "studies/adapter_cost.py", "--onnx-dir", str(onnx_dir), "--adapter",
                           str(tmp_path / "cooking.onnx_adapter"), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "cooking.onnx_adapter missing; run `dvc repro adapter@cooking`")
