"""studies/quant_variants.py: the study behind the README's AWQ table, run on the tiny model."""
import json
import subprocess
import sys

from conftest import ROOT, write_params


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "studies/quant_variants.py"), "--params",
                           str(tmp_path / "params.yaml"), *args], cwd=tmp_path, capture_output=True, text=True)


def test_each_variant_is_quantized_scored_built_and_clocked_beside_the_shipped_model(tiny_dir, quantized_dir,
                                                                                     onnx_dir, rows, tmp_path):
    for part, chunk in (("train", rows[:24]), ("eval", rows[24:30])):
        (tmp_path / "prepared/travel").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"prepared/travel/{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk))
    (tmp_path / "held_out.txt").write_text((ROOT / "README.md").read_text()[:6000])
    write_params(tmp_path / "params.yaml", {"quantize.calibration_samples": 8, "quantize.calibration_seq_len": 64,
                                            "quantize.awq_grid": 4, "evaluate.max_rows": 6, "benchmark.runs": 1,
                                            "benchmark.new_tokens": 8, "benchmark.prompt_tokens": 8})
    out = tmp_path / "variants.jsonl"
    variant_args = "awq_gptq=false int8_modules=[down_proj] calibration_samples=4"
    proc = _run(tmp_path, "-S", variant_args, "--base", str(tiny_dir), "--shipped", str(quantized_dir),
                "--onnx", str(onnx_dir), "--prepared", "prepared", "--held-out", "held_out.txt",
                "--rounds", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    shipped, variant = [json.loads(line) for line in out.read_text().splitlines()]
    assert shipped["variant"] == "shipped" and shipped["quantize_s"] is None
    assert variant["variant"] == variant_args and variant["quantize_s"] > 0
    for record in (shipped, variant):
        assert record["travel_eval"]["tokens"] > 0 and record["held_out"]["tokens"] > 1000
        assert record["decode_tok_s"] > 0 and record["accuracy_level"] == 0  # the shipped (tiny) build's level
    assert variant["travel_eval"]["loss"] != shipped["travel_eval"]["loss"]  # another quantization
    assert 0 < variant["calibration_tokens"] < 8 * 64  # its own calibration blocks: 4 rows, not params' 8
    # int8 down_proj: more bits per weight, a bigger model, more bytes read per token
    assert shipped["bits_per_weight"] == 5.125 < variant["bits_per_weight"]
    assert shipped["model_mb"] < variant["model_mb"]
    assert shipped["weight_mb_per_token"] < variant["weight_mb_per_token"]


def test_a_bad_override_fails_in_one_line_before_any_work(tmp_path):
    write_params(tmp_path / "params.yaml")
    proc = _run(tmp_path, "-S", "awq_gptq_damp=-1", "--held-out", str(ROOT / "README.md"), "--out", "x.jsonl")
    assert proc.returncode == 2 and not (tmp_path / "x.jsonl").exists()
    assert proc.stderr.strip().splitlines()[-1].endswith("quantize.awq_gptq_damp=-1 is below the minimum 0.0")
