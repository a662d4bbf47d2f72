"""The onnxruntime-genai client of the output contract, shared by `scripts/chat.py`, evaluate and benchmark.

og.Model(dir); og.Adapters(model).load(path, name); og.GeneratorParams; og.Generator;
generator.set_active_adapter(adapters, name); append_tokens; generate_next_token until is_done,
decoded through tokenizer.create_stream().
"""
from __future__ import annotations

import json
import os
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from ondevice.atomic import UserError
from ondevice.onnx_folder import genai_config

# og.Model -> its context_length (prompt and answer together), noted by open_model: og.Model does not
# tell it, and a generator asked for more fails only at og.Generator, in a traceback.
_CONTEXT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cuda_serving_path() -> str | None:
    """The folder holding the runtime that serves CUDA models (requirements-cuda-serve.txt), if installed.

    onnxruntime-genai 0.16 and later load an adapter into host memory (PR #2424:
    `CreateLoraAdapter(path, nullptr)`), so onnxruntime copies every adapter tensor to the GPU on every
    decode step: a rank-64 Phi-3.5 adapter then costs ~70 % of decode. 0.15.2 loads adapters with the
    device allocator, one copy at load. Its builder cannot read our checkpoints, so 0.18 stays the
    builder and the CPU runtime, and 0.15.2 lives in its own folder, imported only by a child process
    (ondevice.child.in_child(path_first=...)). `make setup-cuda-serve` puts it in $VENV/og-cuda-serve;
    the CUDA image at /opt/venv/og-cuda-serve; ONDEVICE_CUDA_SERVE names another folder.
    """
    named = os.environ.get("ONDEVICE_CUDA_SERVE")
    folder = Path(named or Path(sys.prefix) / "og-cuda-serve")
    if (folder / "onnxruntime_genai").is_dir():
        return str(folder)
    if named:  # asked for by name: measuring the other runtime instead would be a silent swap
        raise UserError(f"ONDEVICE_CUDA_SERVE={named} holds no onnxruntime_genai package; install it there "
                        "(pip install --no-deps --target DIR -r requirements-cuda-serve.txt) or unset it")
    return None


def runtime_version() -> dict:
    """Which onnxruntime-genai this process imports, and from where (the CUDA serving child's check)."""
    import onnxruntime_genai as og

    return {"version": og.__version__, "path": str(Path(og.__file__).parent)}


def genai_model_config(model_dir: Path) -> dict:
    """The "model" section of a model folder's genai_config.json."""
    return genai_config(model_dir)["model"]


def open_model(model_dir: Path, adapters: dict[str, Path] | None = None, threads: int = 0, **session_options):
    """Load the model, its tokenizer and any adapters (name -> .onnx_adapter path); `threads` and
    `session_options` override the decoder's session options in genai_config.json.
    An adapter file onnxruntime cannot read (a cut-off download) is a UserError naming it."""
    from ondevice.runtime.cuda_check import model_providers, require_cuda_provider

    if "cuda" in model_providers(model_dir, session_options):  # on the GPU or not at all: no silent CPU fall-back
        require_cuda_provider(f"{model_dir} was built for optimize.provider=cuda",
                              otherwise="rebuild it with optimize.provider: cpu")

    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    if threads:
        session_options.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    if session_options:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session_options}}}))
    model = og.Model(config)
    _CONTEXT[model] = int(genai_model_config(model_dir).get("context_length") or 0)
    loaded = None
    if adapters:
        loaded = og.Adapters(model)
        for name, path in adapters.items():
            try:
                loaded.load(str(path), name)
            except RuntimeError as e:  # onnxruntime's flatbuffer verification, or no such file
                from ondevice.export.onnx_lora import bad_adapter

                raise bad_adapter(path, e) from None
    return model, og.Tokenizer(model), loaded


def kv_capacity_floor(model_dir: Path) -> int:
    """The least max_length a generator of this model may have: its sliding window, if any.

    onnxruntime's GroupQueryAttention refuses a shared KV buffer shorter than the window
    ("KV cache capacity (N) must be at least local_window_size"), and onnxruntime-genai sizes that
    buffer from max_length, so a short answer to a short prompt would fail on Gemma 3 / Mistral.
    """
    model = genai_model_config(model_dir)
    window = int((model["decoder"].get("sliding_window") or {}).get("window_size") or 0)
    # Phi-3.5-mini's window (262,144) is past its context (131,072): no window at all, and a floor
    # that large would both exceed max_length's limit and allocate a 51 GB KV cache.
    context = int(model.get("context_length") or 0)
    return window if not context or window < context else 0


def fit_context(model, prompt_tokens: int, max_new_tokens: int, exact: bool = False) -> int:
    """How many new tokens a request may have: max_new_tokens, or what the model's context (prompt and
    answer together, genai_config.json's context_length) leaves after the prompt, with a warning on
    stderr. A prompt that leaves no room, or an exact count (the benchmark) that does not fit, is a
    UserError. A model that open_model did not open is not checked (onnxruntime-genai still is)."""
    context = _CONTEXT.get(model, 0)
    if not context or prompt_tokens + max_new_tokens <= context:
        return max_new_tokens
    if prompt_tokens >= context:
        raise UserError(f"prompt is {prompt_tokens} tokens, and the model's context of {context} tokens must hold "
                        f"the prompt and the answer; shorten the prompt to fewer than {context} tokens")
    if exact:
        raise UserError(f"prompt is {prompt_tokens} tokens; with {max_new_tokens} new tokens that passes the "
                        f"model's context of {context} tokens; shorten the prompt or ask for fewer new tokens")
    room = context - prompt_tokens
    print(f"warning: prompt is {prompt_tokens} tokens; the model's context of {context} tokens leaves room for "
          f"{room} of the {max_new_tokens} new tokens asked, so the answer may stop short", file=sys.stderr)
    return room


def new_generator(model, adapters, adapter_name: str | None, total_tokens: int, capacity_floor: int = 0,
                  exact: bool = False):
    """One request's generator, its KV cache sized for `total_tokens` (never og's default, the whole
    context), pointed at `adapter_name` if given (exact: no stop before total_tokens)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max(total_tokens, capacity_floor), do_sample=False,
                              **({"min_length": total_tokens} if exact else {}))
    generator = og.Generator(model, params)
    if adapters is not None and adapter_name:
        generator.set_active_adapter(adapters, adapter_name)
    return generator


def decode(generator, prompt_ids, max_new_tokens: int) -> Iterator[int]:
    """The one greedy decode loop: prefill the prompt, then yield each new token id."""
    generator.append_tokens(prompt_ids)
    for _ in range(max_new_tokens):
        if generator.is_done():
            break
        generator.generate_next_token()
        yield generator.get_next_tokens()[0]


def generate(model, adapters, adapter_name: str | None, prompt_ids, max_new_tokens: int,
             capacity_floor: int = 0, exact: bool = False) -> Iterator[int]:
    """A greedy answer as token ids (exact: exactly max_new_tokens, as the benchmark needs).
    capacity_floor: the model's sliding window (kv_capacity_floor), the least max_length.
    A request past the model's context is cut or refused (fit_context) before anything runs."""
    max_new_tokens = fit_context(model, len(prompt_ids), max_new_tokens, exact)
    generator = new_generator(model, adapters, adapter_name, len(prompt_ids) + max_new_tokens, capacity_floor, exact)
    yield from decode(generator, prompt_ids, max_new_tokens)


def stream_answer(model, tokenizer, adapters, adapter_name: str | None, prompt_ids,
                  max_new_tokens: int, capacity_floor: int = 0) -> Iterator[str]:
    """Greedy generation, yielding decoded text piece by piece (at most max_new_tokens pieces)."""
    stream = tokenizer.create_stream()
    for token in generate(model, adapters, adapter_name, prompt_ids, max_new_tokens, capacity_floor):
        yield stream.decode(token)


def timed(tokens: Iterator, prompt_tokens: int) -> dict:
    """Clock a token stream: time to first token (prefill included), prompt tokens / that time, and
    decode tok/s over the tokens after the first."""
    t0 = time.perf_counter()
    t_first, n = t0, 0
    for _ in tokens:
        n += 1
        if n == 1:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    ttft = t_first - t0
    return {"prefill_tok_s": prompt_tokens / ttft, "ttft_ms": ttft * 1000,
            "decode_tok_s": (n - 1) / (t_end - t_first) if n > 1 else 0.0, "generated": n}
