"""A model built for CUDA runs on CUDA or stops with one line naming what is missing; onnxruntime on its
own only warns and runs on CPU (ondevice/runtime/cuda_check.py)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from ondevice.atomic import UserError
from ondevice.runtime import cuda_check
from ondevice.runtime.client import open_model

PINS = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", (ROOT / "requirements.txt").read_text(), re.M))
needs_no_cuda = pytest.mark.skipif(cuda_check.cuda_provider_problem() is None,
                                   reason="onnxruntime's CUDA execution provider works here")


def gpu_model(folder, provider_options=({"cuda": {"enable_cuda_graph": "0"}},)):
    """A model folder as far as the check reads it: the genai_config.json of a CUDA build."""
    folder.mkdir(exist_ok=True)
    config = {"model": {"decoder": {"session_options": {"provider_options": list(provider_options)}}}}
    (folder / "genai_config.json").write_text(json.dumps(config))
    return folder


@needs_no_cuda
def test_open_model_refuses_a_cuda_model_without_the_cuda_provider(tmp_path):
    with pytest.raises(UserError) as e:
        open_model(gpu_model(tmp_path / "gpu"))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'gpu'} was built for optimize.provider=cuda but onnxruntime's CUDA "
                              "execution provider cannot load (")
    assert f"NVIDIA driver >= 580 and onnxruntime-gpu=={PINS['onnxruntime']}" in message
    assert message.endswith("or rebuild it with optimize.provider: cpu")


@needs_no_cuda
def test_chat_exits_2_with_one_line(tmp_path):
    out = subprocess.run([os.path.abspath(sys.executable), str(ROOT / "scripts" / "chat.py"), "--model",
                          str(gpu_model(tmp_path / "gpu")), "hi"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and "CUDA execution provider cannot load" in lines[0]
    assert out.stdout == ""  # nothing was generated on CPU instead


def test_the_check_alone_exits_2_with_one_line_where_cuda_cannot_run(tmp_path):
    """`python -m ondevice.runtime.cuda_check`, what the CUDA image runs after its build (docs/container.md)."""
    out = subprocess.run([os.path.abspath(sys.executable), "-m", "ondevice.runtime.cuda_check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: this check asks for CUDA"), out.stderr
    assert "install the NVIDIA driver >= 580" in lines[0] and out.stdout == ""


def test_cpu_models_and_cpu_overlays_are_not_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_check, "cuda_provider_problem", lambda: pytest.fail("checked a CPU model"))
    assert cuda_check.model_providers(gpu_model(tmp_path / "cpu", provider_options=())) == []
    assert cuda_check.model_providers(gpu_model(tmp_path / "gpu"), {"provider_options": []}) == []
    assert cuda_check.model_providers(gpu_model(tmp_path / "gpu")) == ["cuda"]


def test_the_missing_library_is_named():
    # what the loader says for a missing CUDA 13 library is cut to its name (a real dlopen of a missing file)
    assert cuda_check._dlopen_error("libcublasLt.so.13.ondevice-test") == \
        "libcublasLt.so.13.ondevice-test: cannot open shared object file"
    assert cuda_check._dlopen_error("libc.so.6") is None


def test_a_problem_becomes_one_line_with_the_fix(monkeypatch):
    missing = "libcublasLt.so.13: cannot open shared object file"
    monkeypatch.setattr(cuda_check, "cuda_provider_problem", lambda: missing)
    with pytest.raises(UserError) as e:
        cuda_check.require_cuda_provider("optimize.provider=cuda")
    assert str(e.value) == (
        "optimize.provider=cuda but onnxruntime's CUDA execution provider cannot load (libcublasLt.so.13: cannot "
        f"open shared object file); install the NVIDIA driver >= 580 and onnxruntime-gpu=={PINS['onnxruntime']} "
        f"with onnxruntime-genai-cuda=={PINS['onnxruntime-genai']}, or set optimize.provider: cpu")


def test_the_named_gpu_pins_are_the_setup_pins():
    assert cuda_check.ORT_GPU == f"onnxruntime-gpu=={PINS['onnxruntime']}"
    assert cuda_check.GENAI_CUDA == f"onnxruntime-genai-cuda=={PINS['onnxruntime-genai']}"
