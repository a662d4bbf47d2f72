"""A GPU run runs on the GPU or stops: never a silent fall-back to CPU.

onnxruntime only logs a warning when its CUDA execution provider cannot load (a missing CUDA 13
library, no driver, a driver older than CUDA 13 needs) and then runs everything on CPU. Before a
model built for `optimize.provider: cuda` is opened, `require_cuda_provider` proves the provider
works: it loads the provider library, looks for the driver, and runs a one-node model with the CUDA
EP only; anything missing becomes one UserError line naming it.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import re
from pathlib import Path

import click

from ondevice.atomic import UserError
from ondevice.cli import stage
from ondevice.onnx_folder import decoder

# The CUDA stack of the container (docker/Dockerfile, README "Container"): CUDA 13 builds.
ORT_GPU = "onnxruntime-gpu==1.31.1"
GENAI_CUDA = "onnxruntime-genai-cuda==0.18.0"
MIN_DRIVER = 580


def model_providers(model_dir: Path, session_options: dict | None = None) -> list[str]:
    """The execution providers a genai model folder asks for (its genai_config.json, or an overlay)."""
    options = decoder(model_dir).get("session_options", {})
    entries = (session_options or {}).get("provider_options", options.get("provider_options", []))
    return [name.lower() for entry in entries for name in entry]


def _dlopen_error(name: str, mode: int = ctypes.DEFAULT_MODE) -> str | None:
    """None if the shared library loads, else the loader's reason, e.g. 'libcublasLt.so.13: cannot open
    shared object file'."""
    try:
        ctypes.CDLL(name, mode=mode)
    except OSError as e:
        text = str(e)
        missing = re.search(r"([\w.+-]+\.so[\w.+-]*): cannot open shared object file", text)
        return f"{missing.group(1)}: cannot open shared object file" if missing else text.splitlines()[0]
    return None


def _tiny_model() -> bytes:
    """One Relu node, built in memory: the smallest graph the CUDA EP must take."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "cuda_check", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)  # once per process: evaluate and benchmark open many models
def cuda_provider_problem() -> str | None:
    """Why onnxruntime(-genai) cannot run on CUDA here, in a few words; None when it can."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} here is a CPU-only build"
    capi = Path(ort.__file__).parent / "capi"
    provider_lib = capi / "libonnxruntime_providers_cuda.so"
    if provider_lib.exists():  # Linux wheels; the loader names the first missing CUDA/cuDNN library
        problem = _dlopen_error(str(capi / "libonnxruntime_providers_shared.so"), ctypes.RTLD_GLOBAL) \
            or _dlopen_error(str(provider_lib))
        if problem:
            return problem
        if _dlopen_error("libcuda.so.1"):
            return "libcuda.so.1: cannot open shared object file, no NVIDIA driver (in a container: --gpus all)"
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    printed = io.StringIO()  # onnxruntime prints its CPU fall-back ("EP Error ...") to stdout
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(printed):
            session = ort.InferenceSession(_tiny_model(), options, providers=["CUDAExecutionProvider"])
        started = session.get_providers()[:1] == ["CUDAExecutionProvider"]
    except Exception as e:  # noqa: BLE001 - any failure to start is the answer
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    finally:
        ort.set_default_logger_severity(2)
    if not started:
        error = re.search(r"EP Error (.+?) when using", printed.getvalue())
        return error.group(1).strip() if error else "the provider did not start (no usable GPU, or a driver too old)"
    import onnxruntime_genai as og

    if not og.is_cuda_available():
        return "onnxruntime-genai here is the CPU package"
    return None


def require_cuda_provider(what: str, otherwise: str = "set optimize.provider: cpu") -> None:
    """Raise a one-line UserError unless onnxruntime's CUDA execution provider really runs here.
    `what` says who asked for CUDA, `otherwise` the way out without a GPU."""
    problem = cuda_provider_problem()
    if problem:
        raise UserError(f"{what} but onnxruntime's CUDA execution provider cannot load ({problem}); install the "
                        f"NVIDIA driver >= {MIN_DRIVER} and {ORT_GPU} with {GENAI_CUDA}, or {otherwise}")


@click.command()
@stage
def main():
    """`python -m ondevice.runtime.cuda_check`: one line, exit 0 when the CUDA EP runs here, else exit 2."""
    import onnxruntime as ort
    import onnxruntime_genai as og

    require_cuda_provider("this check asks for CUDA", otherwise="run the CPU flavour")
    click.echo(f"CUDA execution provider runs: onnxruntime {ort.__version__}, onnxruntime-genai {og.__version__}")


if __name__ == "__main__":
    main()
