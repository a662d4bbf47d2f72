"""The llama.cpp peer on the same float weights as ours: llama.cpp's own converter, then its quantizer.

The benchmark compares our int4 model with llama.cpp at the sizes users pick (Q4_0, Q4_K_M), made
from the float base that our quantize stage starts from, so both engines start from the same weights.
The converter is the one llama.cpp ships (`convert_hf_to_gguf.py` with its `conversion/` package and
its own `gguf-py`), unpacked from the llama-cpp-python sdist by `make bench-llama` into CONVERTER;
the quantizer is `llama_model_quantize` in the library that sdist builds. Both run in child processes.

One exception to "as shipped": the converter recognises a BPE pre-tokenizer by hashing how the
tokenizer splits a test string. A `random:` shape carries the SmolLM2 tokenizer cut to the shape's
vocabulary (ondevice.sources.random_source), whose splits of that string differ from SmolLM2's, so
the converter would stop; it is told the pre-tokenizer (SmolLM2's) instead, and the GGUF is named
"random-init": llama.cpp gives Phi-3's own special tokens (`</s>`, `<unk>`, `<s>`) extra attributes
when the model's name says Phi-3, and stops loading when that vocabulary lacks them. Token ids are
what both engines are fed, so neither changes what is measured.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ondevice.atomic import UserError

CONVERTER = Path(".cache/llama.cpp")  # convert_hf_to_gguf.py, conversion/, gguf-py/ (make bench-llama)
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17}  # llama.h's LLAMA_FTYPE_MOSTLY_*
RANDOM_PRE_TOKENIZER = "smollm"  # random: shapes carry the SmolLM2 tokenizer, cut

_CONVERT = """
import sys
conv, pre, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [conv, conv + "/gguf-py"]
import convert_hf_to_gguf
from conversion.base import TextModel
if pre:
    TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = ["convert_hf_to_gguf.py", *args]
convert_hf_to_gguf.main()
"""


def check() -> None:
    """What the peer needs, before any stage work: llama-cpp-python and llama.cpp's converter."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise UserError("benchmark.llama_cpp=true needs llama-cpp-python: run `make bench-llama` (it builds it)")
    if not (CONVERTER / "convert_hf_to_gguf.py").exists():
        raise UserError(f"benchmark.llama_cpp=true needs llama.cpp's converter in {CONVERTER}: run `make bench-llama`")


def quantize(f16: str, out: str, ftype: int, threads: int) -> dict:
    """llama.cpp's quantizer, as `llama-quantize` runs it (child process: the library is C)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, threads
    return {"code": int(llama_cpp.llama_model_quantize(f16.encode(), out.encode(), params))}


def make_ggufs(float_dir: Path, out_dir: Path, types: list[str], source: str, threads: int) -> tuple[dict, dict]:
    """float_dir -> out_dir/f16.gguf (converter) -> out_dir/<type>.gguf each; f16 deleted after.
    Returns ({type: path}, seconds by step)."""
    from ondevice.child import in_child

    check()
    out_dir.mkdir(parents=True, exist_ok=True)
    f16, seconds = out_dir / "f16.gguf", {}
    random = source.startswith("random:")
    pre, naming = (RANDOM_PRE_TOKENIZER, ["--model-name", "random-init"]) if random else ("", [])
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CONVERT, str(CONVERTER.resolve()), pre, str(float_dir),
                           "--outtype", "f16", "--outfile", str(f16), *naming], capture_output=True, text=True)
    if done.returncode != 0 or not f16.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"llama.cpp's converter failed on {float_dir}: {last}")
    seconds["convert_f16_s"] = round(time.perf_counter() - t0, 1)
    paths = {}
    for kind in types:
        t0, path = time.perf_counter(), out_dir / f"{kind}.gguf"
        rc = in_child(quantize, f16=str(f16), out=str(path), ftype=FTYPES[kind], threads=threads)["code"]
        if rc != 0 or not path.exists():
            raise UserError(f"llama_model_quantize to {kind} failed (code {rc}) on {f16}")
        seconds[f"quantize_{kind}_s"], paths[kind] = round(time.perf_counter() - t0, 1), path
    f16.unlink()
    return paths, seconds
