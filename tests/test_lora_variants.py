"""studies/lora_variants.py: the study behind docs/awq.md's LoRA variants table, run on the tiny model."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, write_params


def study_folder(tmp_path, tiny_dir, quantized_dir, rows) -> None:
    """What the study reads after `make repro`: the two models, the travel split and short-run params."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models/quantized").symlink_to(quantized_dir)
    (tmp_path / "models/base").symlink_to(tiny_dir)
    for part, chunk in (("train", rows[:24]), ("eval", rows[24:30])):
        (tmp_path / "data/prepared/travel").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"data/prepared/travel/{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk))
    write_params(tmp_path / "params.yaml", {"finetune.max_steps": 2, "finetune.batch_size": 4, "finetune.seq_len": 96,
                                            "evaluate.max_rows": 6})


def study_report(tmp_path, *variants: str, env: dict | None = None) -> dict:
    """Run the study on these variants in tmp_path (README.md as the held-out text); its travel records."""
    proc = subprocess.run([sys.executable, str(ROOT / "studies/lora_variants.py"), "--params", "params.yaml",
                           *[a for v in variants for a in ("--variant", v)], "--held-out", str(ROOT / "README.md")],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((tmp_path / "reports/lora_variants.json").read_text())["travel"]


def test_each_variant_trains_on_int4_and_float_and_reports_the_gap(tiny_dir, quantized_dir, rows, tmp_path):
    study_folder(tmp_path, tiny_dir, quantized_dir, rows)
    report = study_report(tmp_path, "default", "qkvo")
    default, qkvo = report["default"], report["qkvo"]
    assert qkvo["changes"] == {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]} and default["changes"] == {}
    for record in (default, qkvo):
        for split in ("eval", "held_out"):  # the gap is int4 + LoRA over float + the same LoRA, in perplexity
            gap = 100 * (math.exp(record["int4"][split] - record["float"][split]) - 1)
            assert record[f"{split}_gap_pct"] == round(gap, 2)
        assert record["int4"]["eval"] != record["float"]["eval"]  # two trainings, two bases
    assert qkvo["int4"]["eval"] != default["int4"]["eval"]  # more targets, another adapter


def test_a_missing_held_out_text_fails_in_one_line(tmp_path):
    write_params(tmp_path / "params.yaml")
    proc = subprocess.run([sys.executable, str(ROOT / "studies/lora_variants.py"), "--params", "params.yaml",
                           "--variant", "default", "--held-out", "nowhere.txt"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "nowhere.txt missing" in proc.stderr and "Traceback" not in proc.stderr


def test_distill_trains_int4_against_the_pipelines_float_lora(tiny_dir, quantized_dir, rows, tmp_path):
    from ondevice import finetune
    from ondevice import params as P

    study_folder(tmp_path, tiny_dir, quantized_dir, rows)
    # the float_lora@travel stage's output, which the distill variant takes as teacher and as reference
    finetune.run(tiny_dir, tmp_path / "data/prepared/travel/train.jsonl", tmp_path / "models/float_lora/travel",
                 P.adapter(P.load(tmp_path / "params.yaml"), "travel"), float_base=True)
    report = study_report(tmp_path, "default", "distill0.5")
    default, distill = report["default"], report["distill0.5"]
    assert distill["distill"] == 0.5 and distill["changes"] == {}
    assert distill["float"]["source"] == "models/float_lora/travel"
    assert distill["float"]["eval"] == default["float"]["eval"]  # the stage's float LoRA is the default's training
    assert distill["int4"]["eval"] != default["int4"]["eval"]  # the teacher's pull changed the adapter


def assert_table_is_report(report_file: str, heading: str, variants: tuple[str, ...], split: str = "travel") -> None:
    """docs/awq.md's table under **heading**: each variant's row holds the report's eval losses as
    perplexities, its held-out pair and its gap, so a rerun of the study that moves a figure fails here
    until the table follows."""
    report = json.loads((ROOT / report_file).read_text())[split]
    docs = (ROOT / "docs/awq.md").read_text().split(f"**{heading}**")[1].split("\n\n**")[0]
    for variant in variants:
        record = report[variant]
        ppl = [f"{math.exp(record[side]['eval']):.2f}" for side in ("int4", "float")]
        held = " / ".join(f"{math.exp(record[side]['held_out']):.2f}" for side in ("int4", "float"))
        row = next(line for line in docs.splitlines() if line.startswith("|") and held in line)
        assert all(p in row for p in ppl) and f"{record['eval_gap_pct']:.1f} %" in row, (variant, row)


def test_the_fewer_steps_table_is_the_committed_report():
    assert_table_is_report("reports/lora_steps.json", "Fewer steps", ("default", "steps70", "steps50_lr2e-3"))


def test_the_attention_table_is_the_committed_report():
    assert_table_is_report("reports/lora_attention.json", "Eager attention for the CPU steps", ("default", "sdpa"))


def test_the_dropout_table_is_the_committed_reports():
    assert_table_is_report("reports/lora_attention.json", "LoRA dropout off", ("default",))  # the shipped travel row
    assert_table_is_report("reports/lora_dropout.json", "LoRA dropout off", ("dropout0",))
    assert_table_is_report("reports/lora_dropout.json", "LoRA dropout off", ("default", "dropout0"), split="cooking")


def test_the_compile_table_is_the_committed_report():
    assert_table_is_report("reports/lora_compile.json", "torch.compile of the LoRA steps", ("default", "compile"))


@pytest.mark.slow  # inductor's first compile of the layers: over a minute on 2 cores
def test_the_compile_variant_trains_the_same_adapter_as_eager(tiny_dir, quantized_dir, rows, tmp_path):
    """Each decoder layer through torch.compile: inductor built kernels (its cache is not empty), and the
    losses follow eager's to float rounding."""
    study_folder(tmp_path, tiny_dir, quantized_dir, rows)
    inductor = tmp_path / "inductor"
    report = study_report(tmp_path, "default", "compile", env={"TORCHINDUCTOR_CACHE_DIR": str(inductor)})
    assert any(inductor.rglob("*.py"))  # inductor's generated kernels: the layers did run compiled
    default, compiled = report["default"], report["compile"]
    for side in ("int4", "float"):
        assert compiled[side]["train_loss_last"] == pytest.approx(default[side]["train_loss_last"], abs=2e-3), side
        assert compiled[side]["eval"] == pytest.approx(default[side]["eval"], abs=2e-3), side
