"""The model card: generated from params + metrics, Hugging Face-style front matter, shipped as README.md."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, stage_args
from ondevice.ship import model_card
from ondevice.ship.register import bundle_files, make_bundle, manifest

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
PARAMS["adapters"] = {n: PARAMS["adapters"][n] for n in ("travel", "cooking")}  # the two METRICS below cover
EVAL = {
    "on_travel": {"float_base": {"loss": 3.8, "perplexity": 46.6}, "quantized_base": {"loss": 4.1, "perplexity": 59.0},
                  "adapter_travel": {"loss": 3.1, "perplexity": 22.0}, "float_lora": {"loss": 3.05, "perplexity": 21.1},
                  "adapter_cooking": {"loss": 3.3, "perplexity": 26.4}},
    "on_cooking": {"float_base": {"loss": 3.5, "perplexity": 32.4}, "quantized_base": {"loss": 3.7, "perplexity": 41.3},
                   "adapter_travel": {"loss": 3.0, "perplexity": 20.4},
                   "adapter_cooking": {"loss": 2.8, "perplexity": 16.4}},
    "quantization": {"algorithm": "awq", "bits": 4, "group_size": 32}}
METRICS = {
    "data": {"travel": {"rows_train": 274, "rows_eval": 48}, "cooking": {"rows_train": 187, "rows_eval": 33}},
    "adapter": {n: {"adapter_mb": 5.9, "rank": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"]}
                for n in ("travel", "cooking")},
    "quantize": {"algorithm": "awq", "bits": 4, "group_size": 32, "bits_per_weight": 5.125},
    "optimize": {"model_mb": 88.24},
    "evaluate": EVAL,
    "benchmark": {"cpu_count": 2, "threads": 2, "ort_int4": {"decode_tok_s": 155.9, "prefill_tok_s": 802.8,
                                                              "ttft_ms": 79.8, "peak_rss_mb": 221.8},
                  "ort_int4_travel": {"decode_tok_s": 142.3}, "ort_int4_cooking": {"decode_tok_s": 142.9}},
}


def with_params(**changes):
    p = json.loads(json.dumps(PARAMS))
    for dotted, value in changes.items():
        section, _, key = dotted.partition(".")
        if key:
            p[section][key] = value
        else:
            p[section] = value
    return p


TRAVEL_ONLY = {"adapters": {"travel": {"data": "data/travel_qa.jsonl"}}}


def test_front_matter_parses_with_base_license_quantization_adapters_and_eval():
    meta, body = model_card.parse(model_card.render(PARAMS, METRICS))
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "onnxruntime-genai" and meta["pipeline_tag"] == "text-generation"
    assert {"onnx", "int4", "awq", "lora"} <= set(meta["tags"])
    assert meta["quantization"] == {"algorithm": "awq", "bits": 4, "group_size": 32, "symmetric": False,
                                    "int8_modules": [], "bits_per_weight": 5.125,
                                    "calibration": "travel train split", "format": "MatMulNBits (onnxruntime)"}
    assert "AWQ 4-bit, group size 32" in body and "5.125 bits per weight" in body


def test_mixed_precision_is_named_in_the_card():
    params = {**PARAMS, "quantize": {**PARAMS["quantize"], "int8_modules": ["down_proj"]}}
    meta, body = model_card.parse(model_card.render(params, METRICS))
    assert meta["quantization"]["int8_modules"] == ["down_proj"]
    assert "AWQ 4-bit (down_proj at 8 bits), group size 32" in body
    travel = meta["adapters"][0]
    assert travel == {"name": "travel", "file": "adapters/travel.onnx_adapter", "data": "data/travel_qa.jsonl",
                      "rows_train": 274, "rows_eval": 48, "rank": 16, "alpha": 32,
                      "target_modules": ["q_proj", "v_proj"], "steps": 100, "mb": 5.9}
    results = meta["model-index"][0]["results"]
    assert [r["dataset"]["name"] for r in results] == ["travel eval split", "cooking eval split"]
    assert {m["name"]: m["value"] for m in results[0]["metrics"]} == {
        "float base (PyTorch)": 46.6, "int4 base (ONNX)": 59.0, "int4 + travel adapter (ONNX)": 22.0,
        "float base + the split's LoRA trained on it (PyTorch): what int4 costs after finetuning": 21.1}
    assert {m["name"] for m in results[1]["metrics"]} == {"float base (PyTorch)", "int4 base (ONNX)",
                                                         "int4 + cooking adapter (ONNX)"}  # no float LoRA given
    assert "| cooking | int4 + cooking adapter (ONNX) | 2.8 | 16.4 |" in body
    assert "| int4 base (onnxruntime-genai) | 155.9 | 802.8 | 79.8 | 221.8 |" in body
    assert "| int4 + travel adapter | 142.3 |" in body
    assert 'generator.set_active_adapter(adapters, "travel")' in body and "og.Adapters(model)" in body
    model = {"architecture": "LlamaForCausalLM", "parameters": 134515008}
    assert "; LlamaForCausalLM, 134.5 M parameters." in model_card.render(PARAMS, {**METRICS, "model": model})


def test_license_and_base_model_follow_the_source_or_the_override(tmp_path):
    def meta(**changes):
        return model_card.front_matter(with_params(**changes), METRICS)

    phi = meta(**{"model.source": "microsoft/Phi-3.5-mini-instruct"})
    assert phi["license"] == "mit" and phi["base_model"] == "microsoft/Phi-3.5-mini-instruct"
    local = meta(**{"model.source": str(tmp_path)})
    assert local["license"] == "other" and "base_model" not in local and local["model_source"] == str(tmp_path)
    assert meta(**{"register.license": "cc-by-4.0"})["license"] == "cc-by-4.0"
    assert "base_model" not in meta(**{"model.source": "azureml:my-llama:3"})


def test_speed_names_the_machine_and_says_where_each_fact_comes_from():
    body = model_card.parse(model_card.render(PARAMS, METRICS))[1]
    assert f"Measured on {model_card.cpu_model()} (2 cores, 2 threads" in body
    assert "CPU model read when this card was generated" in body
    recorded = {**METRICS, "benchmark": {**METRICS["benchmark"], "cpu_model": "Test CPU 9000"}}
    assert "Measured on Test CPU 9000 (2 cores, 2 threads; core and thread counts from metrics/benchmark.json; " \
           "CPU model metrics/benchmark.json)" in model_card.render(PARAMS, recorded)
    assert "No benchmark metrics." in model_card.render(PARAMS, {**METRICS, "benchmark": None})
    gpu = {"device": "NVIDIA H100 80GB HBM3", "ort_int4": {"decode_tok_s": 90.1}, "torch_bf16": {"decode_tok_s": 30.2}}
    body = model_card.render(PARAMS, {**METRICS, "benchmark": gpu})
    assert "Measured on NVIDIA H100 80GB HBM3 (the GPU named in metrics/benchmark.json)." in body
    assert "| float base (PyTorch bf16) | 30.2 |" in body


def test_bundle_and_manifest_carry_the_card_as_readme(tmp_path):
    onnx, adapters = tmp_path / "onnx", tmp_path / "adapters"
    onnx.mkdir()
    adapters.mkdir()
    (onnx / "genai_config.json").write_text("{}")
    (adapters / "travel.onnx_adapter").write_bytes(b"a")
    card = tmp_path / "model_card.md"
    card.write_text(model_card.render(PARAMS, METRICS))
    assert set(bundle_files(onnx, adapters, card)) == {"genai_config.json", "adapters/travel.onnx_adapter", "README.md"}
    bundle = make_bundle(onnx, adapters, tmp_path / "bundle", card)
    assert (bundle / "README.md").read_text() == card.read_text()
    m = manifest(onnx, adapters, PARAMS, {}, card=card)
    assert m["files"]["README.md"]["bytes"] == card.stat().st_size and "README.md" not in os.listdir(onnx)


def test_register_stage_writes_the_card_and_the_manifest_lists_it(onnx_dir, tmp_path):
    p = with_params(**TRAVEL_ONLY)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    metrics = tmp_path / "metrics"
    files = {"quantize": METRICS["quantize"], "optimize": METRICS["optimize"], "evaluate": EVAL,
             "data/travel": METRICS["data"]["travel"], "adapter/travel": METRICS["adapter"]["travel"]}
    for name, value in files.items():
        (metrics / name).parent.mkdir(parents=True, exist_ok=True)
        (metrics / f"{name}.json").write_text(json.dumps(value))
    out = subprocess.run([sys.executable, str(ROOT / "scripts/register.py"), *stage_args("register"),
                          "--params", "params.yaml", "--onnx",
                          str(onnx_dir), "--adapters", str(onnx_dir / "adapters"), "--metrics-dir", "metrics"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    meta, body = model_card.parse((tmp_path / "reports/model_card.md").read_text())
    assert meta["adapters"][0]["rows_train"] == 274 and "No benchmark metrics." in body
    listed = json.loads((tmp_path / "reports/manifest.json").read_text())["files"]
    assert {"README.md", "adapters/travel.onnx_adapter", "genai_config.json"} <= set(listed)


def test_the_cards_snippet_runs_on_the_shipped_bundle(onnx_dir, tmp_path):
    """The card's "Use it" code, run as is in the shipped folder: loads, switches adapters, generates."""
    p = with_params(**TRAVEL_ONLY)
    metrics = {**METRICS, **{k: {"travel": METRICS[k]["travel"]} for k in ("data", "adapter")}}
    card = tmp_path / "model_card.md"
    card.write_text(model_card.render(p, metrics))
    bundle = make_bundle(onnx_dir, onnx_dir / "adapters", tmp_path / "bundle", card)
    code = (bundle / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    out = subprocess.run([sys.executable, "-c", code.replace("len(prompt) + 64", "len(prompt) + 8")], cwd=bundle,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shutil.rmtree(bundle)


@pytest.mark.parametrize("source, expected", [("embedded:smollm2-135m-instruct", "apache-2.0"),
                                              ("Qwen/Qwen2.5-0.5B-Instruct", "apache-2.0"),
                                              ("meta-llama/Llama-3.2-1B-Instruct", "llama3.2"),
                                              ("google/gemma-3-1b-it", "gemma"), ("./my-model", "other")])
def test_known_licences(source, expected):
    assert model_card.license_of(source) == expected
