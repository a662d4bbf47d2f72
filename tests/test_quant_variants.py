"""scripts/quant_variants.py: the study behind the README's AWQ table, run on the tiny model."""
import json
import subprocess
import sys

from conftest import ROOT, write_params


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts/quant_variants.py"), "--params",
                           str(tmp_path / "params.yaml"), *args], cwd=tmp_path, capture_output=True, text=True)


def test_each_variant_is_quantized_and_scored_beside_the_shipped_model(tiny_dir, quantized_dir, rows, tmp_path):
    for part, chunk in (("train", rows[:24]), ("eval", rows[24:30])):
        (tmp_path / "prepared/travel").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"prepared/travel/{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk))
    (tmp_path / "held_out.txt").write_text((ROOT / "README.md").read_text()[:6000])
    write_params(tmp_path / "params.yaml", {"quantize.calibration_samples": 8, "quantize.calibration_seq_len": 64,
                                            "quantize.awq_grid": 4, "evaluate.max_rows": 6})
    out = tmp_path / "variants.jsonl"
    proc = _run(tmp_path, "-S", "awq_gptq=false awq_clip=false", "--base", str(tiny_dir), "--shipped",
                str(quantized_dir), "--prepared", "prepared", "--held-out", "held_out.txt", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    shipped, variant = [json.loads(line) for line in out.read_text().splitlines()]
    assert shipped["variant"] == "shipped" and shipped["quantize_s"] is None
    assert variant["variant"] == "awq_gptq=false awq_clip=false" and variant["quantize_s"] > 0
    for record in (shipped, variant):
        assert record["travel_eval"]["tokens"] > 0 and record["held_out"]["tokens"] > 1000
    assert variant["travel_eval"]["loss"] != shipped["travel_eval"]["loss"]  # another quantization


def test_a_bad_override_fails_in_one_line_before_any_work(tmp_path):
    write_params(tmp_path / "params.yaml")
    proc = _run(tmp_path, "-S", "awq_gptq_damp=-1", "--held-out", str(ROOT / "README.md"), "--out", "x.jsonl")
    assert proc.returncode == 2 and not (tmp_path / "x.jsonl").exists()
    assert proc.stderr.strip().splitlines()[-1].endswith("quantize.awq_gptq_damp=-1 is below the minimum 0.0")
