"""The CUDA path's two runtime choices, checked where no GPU is: optimize.cuda_graph on a LongRoPE
(Phi-3.5) model drops the rotary-cache switch without changing any answer below the threshold, and
the CUDA benchmark's child imports the serving runtime (onnxruntime-genai 0.15.2) before our own."""
import json
import shutil

import numpy as np
import onnx
import onnxruntime_genai as og
import pytest
import torch

from ondevice.child import in_child
from ondevice.export.builder import drop_rope_switch, run_builder, use_cuda_graph
from ondevice.runtime.client import cuda_serving_path, runtime_version
from ondevice.sources.random_source import shape_config


@pytest.fixture(scope="module")
def phi35_float(tmp_path_factory, tokenizer_dir):
    """Phi-3.5-mini's config (LongRoPE, 4,096-token original context) at 2 small layers, random weights."""
    from transformers import Phi3ForCausalLM

    out = tmp_path_factory.mktemp("phi35")
    config = shape_config("random:phi-3.5-mini")
    config.update(dict(hidden_size=192, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2))
    torch.manual_seed(0)
    Phi3ForCausalLM(config).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, out / f.name)
    return out


def switch(path):
    return [n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "If"]


def test_cuda_graph_build_drops_the_rope_switch_and_caps_the_context(phi35_float, tmp_path):
    out = tmp_path / "cuda"
    run_builder(phi35_float, out, "int4", "cuda", tmp_path / "cache", [])
    (before,) = switch(out / "model.onnx")
    short = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
             for a in before.attribute if a.name == "else_branch" for n in a.g.node}
    assert "cache_slack" not in json.dumps(json.loads((out / "genai_config.json").read_text()))  # 0.15.2 parses it

    use_cuda_graph(out)
    assert switch(out / "model.onnx") == []
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    caches = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name in ("cos_cache", "sin_cache")}
    assert np.array_equal(caches["cos_cache"], short["cos_cache_small"]) and caches["cos_cache"].shape[0] == 4096
    assert np.array_equal(caches["sin_cache"], short["sin_cache_small"])
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["context_length"] == genai["search"]["max_length"] == 4096
    assert [p["cuda"]["enable_cuda_graph"] for p in genai["model"]["decoder"]["session_options"]["provider_options"]
            if "cuda" in p] == ["1"]
    assert drop_rope_switch(out / "model.onnx") is None  # done once; a model without the switch is left alone


def test_dropping_the_switch_keeps_the_logits_below_the_threshold(phi35_float, tmp_path):
    """The same CPU build with and without the switch: identical logits for a prompt and a decoded token."""
    with_switch, without = tmp_path / "with", tmp_path / "without"
    run_builder(phi35_float, with_switch, "fp32", "cpu", tmp_path / "cache", [])
    shutil.copytree(with_switch, without)
    assert drop_rope_switch(without / "model.onnx") == 4096

    def logits(folder):
        model = og.Model(str(folder))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=32, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens([5, 6, 7, 8, 9, 10, 11, 12])
        first = generator.get_output("logits").copy()
        generator.generate_next_token()
        generator.generate_next_token()
        return first, generator.get_output("logits").copy()

    for a, b in zip(logits(with_switch), logits(without), strict=True):
        assert a.shape == b.shape and np.abs(a).max() > 0
        np.testing.assert_array_equal(a, b)


def test_the_child_imports_the_serving_runtime_first(tmp_path, monkeypatch):
    """in_child(path_first=...) is how the CUDA benchmark runs 0.15.2 beside the 0.18 builder."""
    serve = tmp_path / "og-cuda-serve"
    (serve / "onnxruntime_genai").mkdir(parents=True)
    (serve / "onnxruntime_genai" / "__init__.py").write_text('__version__ = "0.15.2-stand-in"\n')
    assert in_child(runtime_version, path_first=str(serve))["version"] == "0.15.2-stand-in"
    assert in_child(runtime_version)["version"] == og.__version__

    monkeypatch.setenv("ONDEVICE_CUDA_SERVE", str(serve))
    assert cuda_serving_path() == str(serve)
    monkeypatch.delenv("ONDEVICE_CUDA_SERVE")
    monkeypatch.setattr("sys.prefix", str(tmp_path / "venv-without-it"))
    assert cuda_serving_path() is None  # not installed: the benchmark warns and measures this runtime
