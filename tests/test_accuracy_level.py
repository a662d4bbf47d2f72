"""optimize.int4_accuracy_level: auto (#18): every MatMulNBits level scored against fp32 and clocked,
the fastest one at or above the bar shipped, the choice recorded beside the model."""
import hashlib
import shutil

import pytest

from conftest import OPT
from ondevice.export.accuracy_level import SPEED_MARGIN, pick_level, ship_accuracy_level
from ondevice.measure.onnx_scoring import level_record, shipped_accuracy_level
from ondevice.text import encode_example


def candidate(tok_s: float, passed: bool = True) -> dict:
    return {"top1_agreement": 0.99 if passed else 0.9, "decode_tok_s": tok_s, "passed": passed}


def test_the_fastest_passing_level_wins():
    assert pick_level({0: candidate(100), 1: candidate(101), 4: candidate(140)}, 0.95) == 4


def test_a_level_under_the_bar_never_ships_however_fast():
    assert pick_level({0: candidate(100), 4: candidate(140, passed=False)}, 0.95) == 0


def test_a_speed_difference_within_noise_keeps_the_more_exact_level():
    """Levels that run the same kernel must not be picked by run-to-run noise."""
    just_inside = 100 * (1 + SPEED_MARGIN) - 0.5
    assert pick_level({0: candidate(100), 1: candidate(99), 4: candidate(just_inside)}, 0.95) == 0
    assert pick_level({0: candidate(100), 4: candidate(100 * (1 + SPEED_MARGIN) + 1)}, 0.95) == 4


@pytest.fixture(scope="module")
def auto_record(onnx_dir, tokenizer, rows, tmp_path_factory):
    built = tmp_path_factory.mktemp("auto") / "onnx"
    shutil.copytree(onnx_dir, built)
    examples = [encode_example(tokenizer, "chat", r, 96) for r in rows[:6]]
    record = ship_accuracy_level(built, {**OPT, "int4_accuracy_level": "auto"}, examples)
    return built, record


def test_auto_scores_and_clocks_every_level_and_ships_its_choice(auto_record, onnx_dir):
    built, record = auto_record
    assert record["chosen_by"] == "auto" and set(record["candidates"]) == {"0", "1", "2", "3", "4"}
    assert record["candidates"]["0"]["top1_agreement"] == 1.0 and record["candidates"]["0"]["mean_kl"] == 0.0
    assert all(c["decode_tok_s"] > 0 and c["mean_kl"] >= 0 for c in record["candidates"].values())
    chosen = record["accuracy_level"]
    assert record["candidates"][str(chosen)]["passed"]
    assert shipped_accuracy_level(built) == chosen  # the graph itself, not only the record
    assert level_record(built) == record


def test_auto_rewrites_only_the_graph_never_the_int4_weights(auto_record, onnx_dir):
    built, _ = auto_record

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(built / "model.onnx.data") == digest(onnx_dir / "model.onnx.data")


def test_a_fixed_level_is_recorded_as_params_set_it(onnx_dir):
    assert level_record(onnx_dir) == {"accuracy_level": 0, "chosen_by": "params", "min_top1_agreement": 0.95}


def test_auto_on_a_cuda_build_scores_one_level_and_clocks_none(onnx_dir, tokenizer, rows, tmp_path,
                                                               monkeypatch):
    """The CUDA MatMulNBits kernel computes in fp16 at every level: clocking five levels there (41 s at
    3.8 B on the H200) measured noise. The CPU-built folder stands in for one, scored on the CPU."""
    from ondevice import child

    built = tmp_path / "onnx"
    shutil.copytree(onnx_dir, built)
    monkeypatch.setattr(child, "in_child", lambda *a, **k: pytest.fail("a CUDA build's levels were clocked"))
    examples = [encode_example(tokenizer, "chat", r, 96) for r in rows[:3]]
    record = ship_accuracy_level(built, {**OPT, "int4_accuracy_level": "auto", "provider": "cuda"}, examples)
    assert set(record["candidates"]) == {"0"} and record["accuracy_level"] == 0 and record["chosen_by"] == "auto"
    assert record["candidates"]["0"]["passed"]
