"""`make repro-lab` (issue #29): its profile is valid params that ship a CPU model trained on the GPU,
and its summary judges the goals the right way round."""
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from test_docker import ROOT, make_n


def profile_params(target: str, tmp_path: Path) -> dict:
    """params.yaml with the -S overrides that `make -n TARGET` passes to dvc, applied by DVC's own parser."""
    from dvc.utils.hydra import apply_overrides

    from ondevice import params as P

    line = make_n(target)  # every recipe line, joined
    words = shlex.split(line[line.index(" -S "):])
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    path = tmp_path / "params.yaml"
    shutil.copy2(ROOT / "params.yaml", path)
    apply_overrides(str(path), overrides)
    params = yaml.safe_load(path.read_text())
    P.validate(params)
    return params


def test_lab_profile_trains_on_the_gpu_and_ships_for_the_cpu(tmp_path):
    p = profile_params("repro-lab", tmp_path)
    assert p["model"]["source"] == "random:phi-3.5-mini"
    assert p["quantize"]["device"] == p["finetune"]["device"] == p["evaluate"]["device"] == "cuda"
    assert p["optimize"]["provider"] == "cpu" and p["optimize"]["int4_accuracy_level"] == "auto"
    assert p["finetune"]["target_modules"] == p["optimize"]["lora_targets"] == ["qkv_proj"]
    assert list(p["adapters"]) == ["travel", "cooking"]  # switching needs two
    assert p["benchmark"]["llama_cpp"] and p["benchmark"]["llama_cpp_types"][0] == "Q4_0"
    assert "scripts/lab_report.py --out reports/lab" in make_n("repro-lab")


def test_gpu_profile_is_valid_params(tmp_path):
    p = profile_params("repro-gpu", tmp_path)
    assert p["optimize"]["provider"] == "cuda" and p["quantize"]["device"] == "cuda"
    assert list(p["adapters"]) == ["travel", "cooking"]  # the lab's two, as the timed runs before
    # timed stage by stage, beside (not over) the CPU pipeline's own record
    assert "scripts/timed_repro.py --exp --metrics reports/gpu/repro.json" in make_n("repro-gpu")


@pytest.mark.parametrize("bench, met", [
    ({"adapter_vs_llama_cpp": 1.25, "adapter_decode_cost_pct_max": 9.9, "roofline_fraction_adapter": 0.7},
     {"adapter_vs_llama_cpp": True, "adapter_decode_cost_pct_max": True, "roofline_fraction_adapter": True}),
    ({"adapter_vs_llama_cpp": 1.19, "adapter_decode_cost_pct_max": 10.5},
     {"adapter_vs_llama_cpp": False, "adapter_decode_cost_pct_max": False, "roofline_fraction_adapter": False}),
])
def test_lab_summary_judges_each_goal_in_its_direction(bench, met):
    from ondevice.measure.lab_report import summarize

    s = summarize({"benchmark": bench}, {"quantize": 200.0, "finetune@travel": 50.0, "finetune@cooking": 60.0,
                                         "optimize": 90.0})
    assert {k: g["met"] for k, g in s["goals"].items()} == met
    assert s["stage_s_vs_lab_a100"]["finetune"] == {"ours_s": 60.0, "lab_a100_s": 360}


def test_lab_card_names_the_cpu():
    from ondevice.measure.lab_report import card

    text = card()
    assert re.search(r"^CPU: .+, \d+ CPUs", text, re.M) and "onnxruntime-genai: " in text
