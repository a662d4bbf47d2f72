"""docs/bad-inputs.md lists every bad input we tried and the exact message; this keeps it true.

Each row of the table names a case below; the test runs it and compares the message with the row
(`…` in a row stands for text that varies, such as a library's own error). Every case must have a
row and every row a case.
"""
import functools
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError
from azure.identity import CredentialUnavailableError
from test_azure_job import BAD_INPUTS as AZURE_JOB_CASES
from test_azure_job import bad_input as azure_job_case
from test_bad_files import chat_context_error, cut_adapter_error, cut_safetensors_error

from conftest import DELETE, ROOT, edited_params, stage_args, write_params
from ondevice import params as P
from ondevice.atomic import UserError, require_free_space
from ondevice.data import read_rows

DOC = ROOT / "docs" / "bad-inputs.md"
PY = os.path.abspath(sys.executable)  # tests chdir; keep the venv interpreter reachable
GOOD = yaml.safe_load((ROOT / "params.yaml").read_text())


def params_error(**changes):
    with pytest.raises(UserError) as e:
        P.validate(edited_params(changes))
    return str(e.value)


def data_error(tmp_path, content: bytes):
    (tmp_path / "data.jsonl").write_bytes(content)
    with pytest.raises(UserError) as e:
        read_rows("data.jsonl")
    return str(e.value)


def script_error(tmp_path, script, *args, **param_changes):
    """A stage script run as dvc.yaml runs it (its paths, relative to an empty folder), `args` on top."""
    write_params(tmp_path / "params.yaml", param_changes)
    adapter = args[args.index("--adapter") + 1] if "--adapter" in args else None
    out = subprocess.run([PY, str(ROOT / "scripts" / f"{script}.py"), "--params", str(tmp_path / "params.yaml"),
                          *stage_args(script, adapter), *args], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0].removeprefix("error: ").removeprefix("Error: ")


def _no_level_passes():
    from ondevice.export.accuracy_level import pick_level

    with pytest.raises(UserError) as e:  # what a CUDA build whose kernels all disagree with the CPU's fp32 gets
        pick_level({level: {"top1_agreement": 0.9, "decode_tok_s": 100.0, "passed": False} for level in (0, 4)}, 0.95)
    return str(e.value)


def _no_level_record(tmp_path):
    from ondevice.measure.onnx_scoring import level_record

    with pytest.raises(UserError) as e:  # an ONNX folder built before optimize recorded its accuracy level
        level_record(tmp_path / "onnx")
    return str(e.value).replace(str(tmp_path), "<dir>")


def _int8_not_in_model(tmp_path):
    import torch
    from safetensors.torch import save_file

    from ondevice.quantize import int8_names

    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj"]  # a Llama layer's projections, as the checkpoint names them
    save_file({f"model.layers.0.{n}.weight": torch.zeros(2, 2) for n in names}, tmp_path / "model.safetensors")
    with pytest.raises(UserError) as e:  # Phi-3's fused name asked of a Llama checkpoint
        int8_names(tmp_path, ["gate_up_proj"])
    return str(e.value)


def _serving_folder_empty(tmp_path):
    from ondevice.runtime.client import cuda_serving_path

    os.environ["ONDEVICE_CUDA_SERVE"] = str(tmp_path / "og-cuda-serve")
    try:
        with pytest.raises(UserError) as e:
            cuda_serving_path()
    finally:
        del os.environ["ONDEVICE_CUDA_SERVE"]
    return str(e.value)


def _evaluate_without_float_lora(tmp_path):
    (tmp_path / "adapters").mkdir()
    for name in ("travel", "cooking"):  # the int4 adapters exist; the float ones do not
        (tmp_path / "adapters" / f"{name}.onnx_adapter").write_bytes(b"")
    return script_error(tmp_path, "evaluate", "--adapters", "adapters", "--float-loras", "float_lora")


ROW = b'{"prompt": "a", "response": "b"}\n'
CASES = {
    "unknown-section": lambda t: params_error(**{"training": {}}),
    "unknown-key": lambda t: params_error(**{"finetune.epochs": 3}),
    "missing-key": lambda t: params_error(**{"finetune.lr": DELETE}),
    "wrong-type": lambda t: params_error(**{"finetune.max_steps": "100"}),
    "below-min": lambda t: params_error(**{"finetune.r": 0}),
    "above-max": lambda t: params_error(**{"data.eval_fraction": 0.95}),
    "unknown-algorithm": lambda t: params_error(**{"quantize.algorithm": "awq2"}),
    "unknown-device": lambda t: params_error(**{"finetune.device": "mps"}),
    "unknown-provider": lambda t: params_error(**{"optimize.provider": "dml"}),
    "cuda-graph-on-cpu": lambda t: params_error(**{"optimize.cuda_graph": True}),
    "cuda-serve-folder-empty": lambda t: _serving_folder_empty(t),
    "removed-key": lambda t: params_error(**{"quantize.bits": 4}),
    "moved-key": lambda t: params_error(**{"evaluate.min_top1_agreement": 0.95}),
    "moved-head-block": lambda t: params_error(**{"optimize.int4_block_size": 32}),
    "unknown-accuracy-level": lambda t: params_error(**{"optimize.int4_accuracy_level": 5}),
    "auto-level-without-eval-split": lambda t: script_error(t, "optimize", "--eval-rows", "nope/eval.jsonl",
                                                            "--adapter", "travel"),
    "auto-level-none-passes": lambda t: _no_level_passes(),
    "onnx-without-level-record": lambda t: _no_level_record(t),
    "int8-modules-split-qkv": lambda t: params_error(**{"quantize.int8_modules": ["v_proj", "down_proj"]}),
    "int8-module-not-in-model": lambda t: _int8_not_in_model(t),
    "bad-lora-target": lambda t: params_error(**{"finetune.target_modules": ["attn"]}),
    "template-placeholder": lambda t: params_error(**{"finetune.template": "Q: {prompt} A:"}),
    "secret-in-params": lambda t: params_error(**{"register.azure.client_secret": "x"}),
    "group-size-divides": lambda t: _fit_error(quantize={"group_size": 128}),
    "seq-len-context": lambda t: _fit_error(finetune={"seq_len": 10000}),
    "yaml-syntax": lambda t: _load_error(t, "model: [\n"),
    "params-missing": lambda t: _load_error(t, None),
    "data-not-utf8": lambda t: data_error(t, ROW + b"\xff\n"),
    "data-not-json": lambda t: data_error(t, ROW + b"{prompt: a}\n"),
    "data-not-object": lambda t: data_error(t, b'"just a string"\n'),
    "data-missing-key": lambda t: data_error(t, b'{"prompt": "a", "answer": "b"}\n'),
    "data-not-string": lambda t: data_error(t, b'{"prompt": ["a"], "response": "b"}\n'),
    "data-empty-value": lambda t: data_error(t, b'{"prompt": "a", "response": ""}\n'),
    "data-too-few-rows": lambda t: data_error(t, ROW * 5),
    "data-messages-order": lambda t: data_error(t, b'{"messages": [{"role": "user", "content": "a"}, '
                                                   b'{"role": "user", "content": "b"}]}\n'),
    "data-messages-role": lambda t: data_error(t, b'{"messages": [{"role": "tool", "content": "a"}]}\n'),
    "data-csv-no-columns": lambda t: _table_error(t, "d.csv", "question,answer\na,b\n"),
    "data-parquet-unreadable": lambda t: _table_error(t, "d.parquet", "<html>not parquet</html>"),
    "data-no-response-token": lambda t: _no_response_token(),
    "finetune-nan-loss": lambda t: _nan_loss(t),
    "metrics-not-finite": lambda t: _not_finite(),
    "chat-prompt-past-context": lambda t: chat_context_error(t),
    "adapter-cut-off": lambda t: cut_adapter_error(t),
    "model-safetensors-cut-off": lambda t: cut_safetensors_error(t),
    "data-file-missing": lambda t: script_error(t, "data", "--adapter", "travel", "--out", "o",
                                                **{"adapters.travel.data": "nope.jsonl"}),
    "data-path-is-dir": lambda t: script_error(t, "data", "--adapter", "travel", "--out", "o",
                                               **{"adapters.travel.data": "."}),
    "adapters-empty": lambda t: params_error(adapters={}),
    "adapter-bad-name": lambda t: params_error(**{"adapters.Travel Q&A": {"data": "x.jsonl"}}),
    "adapter-no-data": lambda t: params_error(**{"adapters.cooking": {"r": 8}}),
    "adapter-unknown-key": lambda t: params_error(**{"adapters.travel.epochs": 3}),
    "adapter-bad-value": lambda t: params_error(**{"adapters.travel.r": 0}),
    "adapter-target-not-in-graph": lambda t: params_error(**{"adapters.cooking.target_modules": ["q_proj", "o_proj"]}),
    "calibration-not-an-adapter": lambda t: params_error(**{"quantize.calibration": "chess"}),
    "adapter-unknown-name": lambda t: script_error(t, "finetune", "--adapter", "chess"),
    "benchmark-before-adapters": lambda t: script_error(t, "benchmark"),
    "evaluate-before-float-lora": lambda t: _evaluate_without_float_lora(t),
    "llama-cpp-not-built": lambda t: _llama_cpp_missing(t),
    "llama-cpp-no-converter": lambda t: _llama_cpp_converter_missing(t),
    "model-path-missing": lambda t: script_error(t, "model", "--out", "o", **{"model.source": "./no/model"}),
    "model-not-causal-lm": lambda t: script_error(t, "model", "--out", "o", **{"model.source": _bert(t)}),
    "model-unknown-embedded": lambda t: script_error(t, "model", "--out", "o", **{"model.source": "embedded:x"}),
    "chat-template-on-base-model": lambda t: _render_error(),
    "model-unknown-random-shape": lambda t: script_error(t, "model", "--out", "o",
                                                         **{"model.source": "random:llama-70b"}),
    "model-hub-unreachable": lambda t: _hub_unreachable(t),
    "model-unsupported-family": lambda t: script_error(t, "model", "--out", "o", **{"model.source": _gpt2(t)}),
    "model-gguf-missing": lambda t: script_error(t, "model", "--out", "o",
                                                 **{"model.source": "./no/model.Q4_K_M.gguf"}),
    "model-gguf-not-gguf": lambda t: script_error(t, "model", "--out", "o", **{"model.source": _not_gguf(t)}),
    "model-azureml-bad-id": lambda t: script_error(t, "model", "--out", "o", **{"model.source": "azureml:phi-3"}),
    "model-azureml-no-workspace": lambda t: _azureml_error(t, "azureml:my-llama:3"),
    "model-azureml-not-found": lambda t: _azureml_error(t, PHI + "/99", error=ResourceNotFoundError("not found")),
    "model-azureml-no-credentials": lambda t: _azureml_error(
        t, PHI + "/4", error=CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token")),
    "model-azureml-credentials-rejected": lambda t: _azureml_error(
        t, PHI + "/4", error=ClientAuthenticationError("AADSTS7000222: The provided client secret keys are expired.")),
    "model-azureml-not-causal-lm": lambda t: _azureml_error(
        t, "azureml://registries/azureml/models/bert-base-uncased/versions/1", write="bert"),
    "disk-full": lambda t: _disk_error(t),
    "cuda-missing": lambda t: _cuda_error(),
    "chat-no-model": lambda t: _chat_error(t, "--model", str(t / "none")),
    "cuda-provider-missing": lambda t: _cuda_provider_error(t),
    **{case: (lambda t, case=case: azure_job_case(case, t)) for case in AZURE_JOB_CASES},
}


def _fit_error(**sections):
    class Config:  # SmolLM2-135M's sizes
        hidden_size, intermediate_size, max_position_embeddings = 576, 1536, 8192

    p = json.loads(json.dumps(GOOD))
    for section, values in sections.items():
        p[section].update(values)
    with pytest.raises(UserError) as e:
        P.check_model_fit(p, Config)
    return str(e.value)


def _load_error(tmp_path, text):
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as e:
        P.load("params.yaml")
    return str(e.value)


def _llama_cpp_missing(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llama_cpp"):
        pytest.skip("llama-cpp-python is installed here")
    return script_error(tmp_path, "benchmark", **{"benchmark.llama_cpp": True})


def _llama_cpp_converter_missing(tmp_path):
    """llama-cpp-python installed (stood in for by any spec) but llama.cpp's converter not unpacked."""
    import importlib.util
    from unittest import mock

    from ondevice.atomic import UserError
    from ondevice.measure import gguf_peer

    real = importlib.util.find_spec

    def find_spec(name, *args):
        return real("json") if name == "llama_cpp" else real(name, *args)

    with mock.patch.object(gguf_peer, "CONVERTER", tmp_path / ".cache" / "llama.cpp"), \
            mock.patch("importlib.util.find_spec", find_spec):
        with pytest.raises(UserError) as e:
            gguf_peer.check()
    return str(e.value).replace(str(tmp_path) + "/", "")


def _bert(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    return "./bert"


def _gpt2(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2",
                                                               "architectures": ["GPT2LMHeadModel"]}))
    return "./gpt2"


def _not_gguf(tmp_path):
    (tmp_path / "model.Q4_K_M.gguf").write_bytes(b"<!DOCTYPE html><html>Sign in</html>")
    return "./model.Q4_K_M.gguf"


PHI = "azureml://registries/azureml/models/Phi-3.5-mini-instruct/versions"


def _table_error(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError) as e:
        read_rows(name)
    return str(e.value)


@functools.cache
def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from ondevice.sources.model_source import resolve

    name, kwargs = resolve("embedded:smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(name, **kwargs)


def _no_response_token():
    from ondevice.text import keep_answerable

    rows = [{"prompt": f"{i} " + "word " * 400, "response": "Short."} for i in range(12)]
    with pytest.raises(UserError) as e:
        keep_answerable(_smollm2_tokenizer(), "{prompt}\n{response}", rows, 256, "data.jsonl")
    return str(e.value)


def _nan_loss(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import TINY
    from ondevice import finetune

    p = {**P.adapter_config(GOOD, "travel"), "max_steps": 1, "r": 2, "template": "{prompt}\n{response}"}
    with pytest.MonkeyPatch.context() as m:  # a real step on a tiny model whose loss comes out NaN
        m.setattr(finetune, "response_loss", lambda model, batch: torch.tensor(float("nan"), requires_grad=True))
        m.setattr(finetune, "load_dequantized", lambda folder, dtype, device: LlamaForCausalLM(LlamaConfig(**TINY)))
        with pytest.raises(UserError) as e:
            finetune.train("unused", _smollm2_tokenizer(), [{"prompt": "a", "response": "b"}] * 8, p)
    return str(e.value)


def _not_finite():
    from ondevice.atomic import write_json

    with pytest.raises(UserError) as e:
        write_json("metrics/evaluate.json", {"on_travel": {"adapter_travel": {"loss": float("nan")}}})
    return str(e.value)


def _render_error():
    """The chat template asked of a tokenizer that has none (what quantize's calibration rendering meets first)."""
    from types import SimpleNamespace

    from ondevice.text import encode_example

    with pytest.raises(UserError) as e:
        encode_example(SimpleNamespace(chat_template=None), "chat", {"prompt": "Where is Porto?",
                                                                     "response": "In Portugal."}, 64)
    return str(e.value)


def _azureml_error(tmp_path, source, error=None, write=None):
    """What scripts/model.py does before the heavy load, with a fake MLClient at the network boundary."""
    from test_model_source import FakeAzure, bert_writer

    from ondevice.sources import azureml_source
    from ondevice.sources.model_source import check_supported, load_config

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONDEVICE_CACHE", str(tmp_path / "cache"))
        for var in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"):
            mp.delenv(var, raising=False)
        mp.setattr(azureml_source, "client", FakeAzure(write={"bert": bert_writer}.get(write), error=error))
        with pytest.raises(UserError) as e:
            check_supported(load_config(source, GOOD), source)
    return str(e.value)


def _hub_unreachable(tmp_path):
    with pytest.MonkeyPatch.context() as mp:  # not os.environ: that would leak into every later test
        mp.setenv("HF_HUB_OFFLINE", "1")
        return script_error(tmp_path, "model", "--out", "o", **{"model.source": "someone/not-cached-model"})


def _disk_error(tmp_path):
    with pytest.raises(UserError) as e:
        require_free_space(tmp_path, 1 << 60, "the float base model")
    return re.sub(r"have \d+ MiB", "have … MiB", str(e.value).replace(str(tmp_path), "<dir>"))


def _cuda_error():
    import torch

    from ondevice.checkpoint import pick_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError) as e:
        pick_device("cuda")
    return str(e.value)


def _chat_error(tmp_path, *args):
    out = subprocess.run([PY, str(ROOT / "scripts" / "chat.py"), *args, "hi"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode != 0
    return out.stderr.strip().removeprefix("Error: ")


def _cuda_provider_error(tmp_path):
    from ondevice.runtime.cuda_check import cuda_provider_problem

    if cuda_provider_problem() is None:
        pytest.skip("onnxruntime's CUDA execution provider works here")
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "genai_config.json").write_text(
        json.dumps({"model": {"decoder": {"session_options": {"provider_options": [{"cuda": {}}]}}}}))
    out = subprocess.run([PY, str(ROOT / "scripts" / "chat.py"), "--model", str(tmp_path / "gpu"), "hi"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr.strip().removeprefix("error: ")


def documented_rows() -> dict:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `([a-z0-9-]+)` \| (.+?) \| `(.+)` \|$", line)
        if m:
            rows[m.group(1)] = m.group(3)
    return rows


def test_every_case_is_documented_and_every_row_tested():
    assert set(documented_rows()) == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_documented_message_is_the_real_one(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = CASES[case](tmp_path).replace(str(tmp_path), "<dir>")
    expected = documented_rows()[case]
    pattern = "^" + re.escape(expected).replace("…", ".*") + "$"
    assert re.match(pattern, message), f"\ndoc:  {expected}\nreal: {message}"


