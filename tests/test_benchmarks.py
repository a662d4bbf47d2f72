"""Micro-benchmarks of the hot paths (pytest-benchmark). Judged by their saved JSON in .benchmarks/
(compare runs with `pytest-benchmark compare`), never by timed asserts; the asserts here check the
work was really done."""
from pathlib import Path

import onnxruntime_genai as og
import pytest

from ondevice.measure import engines as E
from ondevice.measure.benchmark import benchmark as run_benchmark

PROMPT_TOKENS = 32


@pytest.fixture(scope="module")
def runtime(onnx_dir):
    model = og.Model(str(onnx_dir))
    adapters = og.Adapters(model)
    adapters.load(str(onnx_dir / "adapters" / "travel.onnx_adapter"), "travel")
    tok = og.Tokenizer(model)
    return model, adapters, tok, E.prompt_ids(tok.encode, PROMPT_TOKENS)


def _primed_generator(model, adapters, ids, adapter):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 512, min_length=len(ids) + 512, do_sample=False)
    gen = og.Generator(model, params)
    if adapter:
        gen.set_active_adapter(adapters, adapter)
    gen.append_tokens(ids)
    return gen


@pytest.mark.parametrize("adapter", [None, "travel"], ids=["base", "adapter"])
def test_decode_step(benchmark, runtime, adapter):
    model, adapters, _, ids = runtime
    gen = _primed_generator(model, adapters, ids, adapter)
    before = gen.token_count()
    benchmark.pedantic(gen.generate_next_token, rounds=200, iterations=1, warmup_rounds=5)
    assert gen.token_count() == before + 205


def test_adapter_switch(benchmark, runtime):
    model, adapters, _, ids = runtime

    def switch():
        gen = og.Generator(model, og.GeneratorParams(model))
        gen.set_active_adapter(adapters, "travel")
        return gen

    gen = benchmark(switch)
    gen.append_tokens(ids)  # the switched generator decodes with the adapter on
    gen.generate_next_token()
    assert gen.token_count() == len(ids) + 1


def test_tokenizer_encode(benchmark, runtime):
    _, _, tok, _ = runtime
    ids = benchmark(tok.encode, E.PROMPT[:2000])
    assert len(ids) > 300


@pytest.fixture(scope="module")
def two_adapters(onnx_dir, tmp_path_factory):
    """The trained adapter and a second one (its B doubled): what switching needs."""
    from ondevice.export import onnx_lora

    travel = onnx_dir / "adapters" / "travel.onnx_adapter"
    arrays = onnx_lora.read_adapter(travel)
    other = tmp_path_factory.mktemp("second") / "cooking.onnx_adapter"
    onnx_lora.write_adapter(other, {k: v * 2 if k.endswith("lora_B") else v for k, v in arrays.items()})
    return {"travel": travel, "cooking": other}


def test_benchmark_stage_reports_every_metric(onnx_dir, tiny_dir, two_adapters):
    b = dict(prompt_tokens=16, new_tokens=8, runs=1, warmup=0, threads=1, torch_baseline=True, torch_runs=1, switches=6,
             context_lengths=[16, 48], thread_counts=[1, 2], sweep_new_tokens=4, llama_cpp=False, profile=True)
    metrics, plots = run_benchmark(onnx_dir, two_adapters, tiny_dir, b)
    for engine in ("ort_int4", "ort_int4_travel", "ort_int4_cooking", "torch_fp32"):
        assert metrics[engine]["decode_tok_s"] > 0 and metrics[engine]["peak_rss_mb"] > 0
        assert metrics[engine]["generated"] == 8
    assert {"speedup_vs_torch_fp32", "model_mb", "threads", "adapter_decode_cost_pct_max"} <= set(metrics)
    assert set(metrics["adapter_decode_cost_pct"]) == set(metrics["adapter_mb"]) == {"travel", "cooking"}
    assert 0 < metrics["weight_mb_per_token"] < metrics["model_mb"] and metrics["memory_bandwidth_gb_s"] > 0
    assert 0 < metrics["roofline_fraction"] and metrics["roofline_tok_s"] > 0
    paired = metrics["paired"]
    assert paired["base_decode_tok_s"] > 0 and metrics["adapter_decode_cost_pct"]["travel"] == paired["travel_cost_pct"]
    s = metrics["switching"]
    assert s["adapters_loaded"] == 2 and set(s["adapter_load_ms"]) == {"travel", "cooking"}
    assert 0 < s["set_active_adapter_us_median"] <= s["set_active_adapter_us_max"] and s["switching_decode_tok_s"] > 0
    assert s["rss_all_adapters_mb"] >= s["rss_before_adapters_mb"] > 0
    # each child's own peak, not its parent's: the tiny model's children stay far below the 512 MB probe
    assert all(r["peak_rss_mb"] < 400 for r in plots["context"])
    prof = metrics["profile"]["travel"]
    assert prof["decode_steps"] == 7 and prof["by_category_us_per_token"]["int4_matmul"] > 0
    # the LoRA nodes run with the zero-size defaults too: the profile shows what they cost when off
    assert prof["by_category_us_per_token"]["lora"] > 0
    assert "lora" in metrics["profile"]["base"]["by_category_us_per_token"]
    assert 0 < prof["kernel_us_per_token"] <= prof["session_run_us_per_token"] <= prof["wall_us_per_token"]
    assert [r["engine"] for r in plots["engines"]] == ["ort_int4", "ort_int4_travel", "ort_int4_cooking", "torch_fp32"]
    assert [(r["context"], r["model"]) for r in plots["context"]] == [(16, "base"), (16, "travel"), (48, "base"),
                                                                       (48, "travel")]
    assert [r["threads"] for r in plots["threads"]] == [1, 1, 2, 2]
    assert all(r["decode_tok_s"] > 0 for rows in plots.values() for r in rows)


def test_llama_cpp_peer_decodes_the_embedded_gguf():
    pytest.importorskip("llama_cpp", reason="optional peer: `make bench-llama` builds llama-cpp-python")
    from ondevice.sources.embedded import embedded_gguf

    gguf = str(embedded_gguf("embedded:smollm2-135m-instruct"))
    b = dict(prompt_tokens=16, new_tokens=8, runs=2, warmup=0, threads=1)
    r = E.llama_cpp_decode(gguf, b)
    assert r["generated"] == 8 and r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0


def test_llama_cpp_takes_turns_in_the_paired_rounds(onnx_dir):
    pytest.importorskip("llama_cpp", reason="optional peer: `make bench-llama` builds llama-cpp-python")
    from ondevice.sources.embedded import embedded_gguf

    b = dict(prompt_tokens=16, new_tokens=8, runs=2, warmup=0, threads=1)
    adapters = {"travel": str(onnx_dir / "adapters" / "travel.onnx_adapter")}
    ggufs = {"Q4_1": str(embedded_gguf("embedded:smollm2-135m-instruct"))}
    r = E.paired_decode(str(onnx_dir), adapters, b, ggufs)
    assert r["llama_cpp_q4_1_decode_tok_s"] > 0 and r["base_decode_tok_s"] > 0 and "travel_cost_pct" in r


@pytest.mark.parametrize("phi3", [False, True], ids=["llama", "phi3-longrope-cut-vocab"])
def test_llama_cpp_converter_makes_each_type_from_the_float_base(tiny_dir, tokenizer_dir, tmp_path, phi3):
    """llama.cpp's own converter and quantizer on the float base: a Llama with SmolLM2's tokenizer, and a
    Phi-3 with LongRoPE and the vocabulary cut as `random:phi-3.5-mini` cuts it (the converter is told
    the pre-tokenizer). The GGUFs decode, and the f16 on the way is gone."""
    pytest.importorskip("llama_cpp", reason="optional peer: `make bench-llama` builds llama-cpp-python")
    from ondevice.measure import gguf_peer

    if not (gguf_peer.CONVERTER / "convert_hf_to_gguf.py").exists():
        pytest.skip("llama.cpp's converter is unpacked by `make bench-llama`")
    source, float_dir = "embedded:smollm2-135m-instruct", tiny_dir
    if phi3:
        source, float_dir = "random:phi-3.5-mini", tiny_phi3(tmp_path / "phi3", tokenizer_dir)
    ggufs, seconds = gguf_peer.make_ggufs(float_dir, tmp_path / "gguf", ["Q4_0", "Q4_K_M"], source, threads=2)
    assert set(ggufs) == {"Q4_0", "Q4_K_M"} and sorted(p.name for p in (tmp_path / "gguf").iterdir()) == [
        "Q4_0.gguf", "Q4_K_M.gguf"]
    assert seconds["convert_f16_s"] > 0
    r = E.llama_cpp_decode(str(ggufs["Q4_0"]), dict(prompt_tokens=16, new_tokens=8, runs=1, warmup=0, threads=1))
    assert r["generated"] == 8


def tiny_phi3(out: Path, tokenizer_dir: Path) -> Path:
    """A two-layer Phi-3 with random:phi-3.5-mini's LongRoPE structure (head_dim 96) and cut vocabulary."""
    import shutil

    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from ondevice.sources.random_source import PHI35_MINI, cut_vocabulary

    shutil.copytree(tokenizer_dir, out)
    cut_vocabulary(out, PHI35_MINI["vocab_size"])
    config = Phi3Config(**{**PHI35_MINI, "hidden_size": 192, "intermediate_size": 256, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "num_key_value_heads": 2})
    torch.manual_seed(0)
    Phi3ForCausalLM(config).save_pretrained(out)
    return out


def test_levers_script_measures_every_variant(quantized_dir, trained, tmp_path):
    """`make levers` on the tiny model: every variant builds, loads an adapter and is measured."""
    import json
    import subprocess
    import sys

    from conftest import ROOT, write_params

    changes = {f"benchmark.{k}": v for k, v in dict(prompt_tokens=16, new_tokens=6, runs=1, warmup=0,
                                                     context_lengths=[32]).items()}
    write_params(tmp_path / "params.yaml", {**changes, "optimize.int4_accuracy_level": 0})
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "travel").symlink_to(trained[3])
    out = subprocess.run([sys.executable, str(ROOT / "studies" / "levers.py"),
                          "--params", str(tmp_path / "params.yaml"), "--quantized", str(quantized_dir),
                          "--lora", str(tmp_path / "lora"), "--adapter", "travel", "--rounds", "1",
                          "--out", str(tmp_path / "levers.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "levers.json").read_text())
    assert set(result["variants"]) == {"shipped", "accuracy_level_0", "head_block_128", "no_spinning",
                                       "genai_default_threads", "full_prefill_logits", "lora_on_all_projections"}
    for row in result["variants"].values():
        assert row["base_decode_tok_s"] > 0 and row["travel_decode_tok_s"] > 0 and row["context_32_peak_rss_mb"] > 0
    # the head block changes what a token reads (on this 64-wide model a 128 block pads); graph variants do not
    variants = result["variants"]
    assert variants["head_block_128"]["weight_mb_per_token"] != variants["shipped"]["weight_mb_per_token"]
    assert variants["no_spinning"]["weight_mb_per_token"] == variants["shipped"]["weight_mb_per_token"]


def test_interleaved_rounds_take_turns_and_drop_the_warmup():
    calls = []
    out = E.interleaved({"a": lambda: calls.append("a") or len(calls), "b": lambda: calls.append("b") or len(calls)},
                        runs=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert out == {"a": [3, 5], "b": [4, 6]}


def test_the_cuda_benchmarks_measuring_runs_wherever_the_model_runs(onnx_dir, monkeypatch):
    """benchmark_cuda.measure (what the CUDA serving child runs), here on the CPU build: interleaved
    engines, medians, the context sweep and the runtime it imported; GPU memory read as 0."""
    from ondevice.measure import benchmark_cuda

    monkeypatch.setattr(benchmark_cuda, "gpu_memory_used_mb", lambda: 0.0)
    b = {"prompt_tokens": 16, "new_tokens": 8, "runs": 2, "warmup": 1, "context_lengths": [32], "sweep_new_tokens": 4}
    m = benchmark_cuda.measure(str(onnx_dir), {"travel": str(onnx_dir / "adapters" / "travel.onnx_adapter")}, None, b)
    assert m["runtime"] == f"onnxruntime-genai-cuda {og.__version__}"
    assert set(m["results"]) == {"ort_int4", "ort_int4_travel"}
    assert all(r["decode_tok_s"] > 0 for r in m["results"].values())
    assert [(r["context"], r["model"]) for r in m["context_rows"]] == [(32, "base"), (32, "travel")]
