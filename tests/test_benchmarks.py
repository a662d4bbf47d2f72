"""Micro-benchmarks of the hot paths (pytest-benchmark). Judged by their saved JSON in .benchmarks/
(compare runs with `pytest-benchmark compare`), never by timed asserts; the asserts here check the
work was really done."""
import onnxruntime_genai as og
import pytest

from ondevice import benchmark as B

PROMPT_TOKENS = 32


@pytest.fixture(scope="module")
def runtime(onnx_dir):
    model = og.Model(str(onnx_dir))
    adapters = og.Adapters(model)
    adapters.load(str(onnx_dir / "adapters" / "travel.onnx_adapter"), "travel")
    tok = og.Tokenizer(model)
    return model, adapters, tok, B.prompt_ids(tok.encode, PROMPT_TOKENS)


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

    assert benchmark(switch) is not None


def test_tokenizer_encode(benchmark, runtime):
    _, _, tok, _ = runtime
    ids = benchmark(tok.encode, B.PROMPT[:2000])
    assert len(ids) > 300


def test_benchmark_stage_reports_every_metric(onnx_dir, tiny_dir):
    b = dict(prompt_tokens=16, new_tokens=8, runs=1, warmup=0, threads=1, torch_baseline=True)
    metrics, plot = B.benchmark(onnx_dir, onnx_dir / "adapters" / "travel.onnx_adapter", "travel", tiny_dir, b)
    for engine in ("ort_int4", "ort_int4_adapter", "torch_fp32"):
        assert metrics[engine]["decode_tok_s"] > 0 and metrics[engine]["peak_rss_mb"] > 0
        assert metrics[engine]["generated"] == 8
    assert {"adapter_decode_cost_pct", "speedup_vs_torch_fp32", "model_mb", "adapter_mb", "threads"} <= set(metrics)
    assert 0 < metrics["weight_mb_per_token"] < metrics["model_mb"] and metrics["memory_bandwidth_gb_s"] > 0
    assert 0 < metrics["roofline_fraction"] and metrics["roofline_tok_s"] > 0
    assert [row["engine"] for row in plot] == ["ort_int4", "ort_int4_adapter", "torch_fp32"]
