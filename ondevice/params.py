"""params.yaml: load it and check it against the typed sections (ondevice.sections) before any heavy
work. A bad value fails with one line naming the key, the value and what is allowed
(docs/bad-inputs.md lists them). section() and adapter() give a stage its typed cfg.
"""
from __future__ import annotations

from pathlib import Path
from typing import get_args

import yaml
from pydantic import ValidationError

from ondevice.atomic import UserError
from ondevice.sections import ADAPTER_NAME, AZURE_KEYS, SECTIONS, AdapterConfig, AdapterOverrides, Finetune, Section


def _message(where: str, error: dict, model: type[Section]) -> str:
    """pydantic's error for one key, as our one line: the key, the value, what is allowed."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error["input"]
    field = model.model_fields[error["loc"][0]].annotation
    if kind == "literal_error":
        allowed = get_args(get_args(field)[0]) if get_args(field) and get_args(get_args(field)[0]) else get_args(field)
        if len(error["loc"]) == 1 and not any(type(value) is type(a) for a in allowed):  # '4' for 4: a type error
            return f"{where} has type {type(value).__name__}; expected {type(allowed[0]).__name__}"
        return f"{where} is not allowed; allowed: {', '.join(map(str, allowed))}"
    if kind == "greater_than_equal":
        return f"{where} is below the minimum {ctx['ge']}"
    if kind == "less_than_equal":
        return f"{where} is above the maximum {ctx['le']}"
    if kind == "too_short":
        return f"{where} is empty"
    expected = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str",
                "list_type": "list", "dict_type": "dict"}.get(kind)
    if expected and len(error["loc"]) > 1:  # a list item
        return f"{where} holds {value!r}; expected {expected} values"
    if expected:
        return f"{where} has type {type(value).__name__}; expected {expected}"
    return f"{where}: {error['msg']}"


# Keys an older params.yaml may still carry: what became of each
REMOVED = {"quantize.bits": "every weight ships as int4 (MatMulNBits 4-bit); delete the key",
           "optimize.int4_block_size": "the head's int4 block is quantize.head_block_size (quantize rounds the "
                                       "head on it and records it; optimize reads it from the checkpoint); "
                                       "move the value there",
           "evaluate.min_top1_agreement": "the bar moved to optimize.min_top1_agreement, which also drives "
                                          "int4_accuracy_level: auto; move the value there"}


def _section(name: str, model: type[Section], given: dict, where_key: str | None = None) -> None:
    """Validate one section (or one adapter's overrides against `model`); raise the first error as one line."""
    try:
        model.model_validate(given)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        key = error["loc"][0]
        prefix = where_key or name
        if error["type"] == "extra_forbidden":
            if f"{prefix}.{key}" in REMOVED:
                raise UserError(f"params.yaml: {prefix}.{key} was removed: {REMOVED[f'{prefix}.{key}']}") from None
            known = ", ".join(model.model_fields)
            raise UserError(f"params.yaml: unknown key {prefix}.{key}; known: {known}") from None
        if error["type"] == "missing":
            raise UserError(f"params.yaml: missing key {prefix}.{key}") from None
        raise UserError(_message(f"params.yaml: {prefix}.{key}={given[key]!r}", error, model)) from None


def validate(params: dict) -> dict:
    if not isinstance(params, dict):
        raise UserError("params.yaml: top level must be a mapping of sections")
    for section in params:
        if section not in SECTIONS:
            raise UserError(f"params.yaml: unknown section {section!r}; known: {', '.join(SECTIONS)}")
    for section, model in SECTIONS.items():
        if not isinstance(params.get(section), dict):
            raise UserError(f"params.yaml: section {section!r} is missing or not a mapping")
        if model:
            _section(section, model, params[section])
    for key, value in params["register"]["azure"].items():
        if key not in AZURE_KEYS:
            raise UserError(f"params.yaml: unknown key register.azure.{key}; known: {', '.join(AZURE_KEYS)} "
                            "(credentials belong in `az login` or the environment, not in params)")
        if value is not None and not isinstance(value, str):
            raise UserError(f"params.yaml: register.azure.{key}={value!r} must be a string or empty")
    _check_template("finetune.template", params["finetune"]["template"])
    if params["optimize"]["cuda_graph"] and params["optimize"]["provider"] != "cuda":
        raise UserError("params.yaml: optimize.cuda_graph=true needs optimize.provider=cuda "
                        "(CUDA graphs are a CUDA execution provider feature); set it false for a CPU build")
    _check_int8_modules(params["quantize"]["int8_modules"])
    _check_adapters(params)
    return params


def _check_int8_modules(modules: list[str]) -> None:
    """q/k/v all or none: the ONNX builder packs them into one MatMulNBits, which has one bit width."""
    qkv = {"q_proj", "k_proj", "v_proj"}
    if qkv & set(modules) and not qkv <= set(modules):
        raise UserError(f"params.yaml: quantize.int8_modules={modules!r} splits q/k/v; the ONNX builder packs "
                        "q_proj, k_proj and v_proj into one MatMulNBits of one bit width: list all three or none")


def _check_template(where: str, template: str) -> None:
    if template != "chat" and ("{prompt}" not in template or "{response}" not in template):
        raise UserError(
            f"params.yaml: {where}={template!r} lacks a placeholder; "
            "use 'chat' or a string containing both {prompt} and {response}"
        )


def _check_adapters(params: dict) -> None:
    adapters = params["adapters"]
    if not adapters:
        raise UserError("params.yaml: adapters is empty; list at least one, e.g. travel: {data: data/travel_qa.jsonl}")
    for name, spec in adapters.items():
        if not isinstance(name, str) or not ADAPTER_NAME.match(name) or name == "none":
            raise UserError(f"params.yaml: adapter name {name!r} must be lower-case letters, digits, - or _ "
                            "(it names files and DVC stages), and not 'none'")
        if not isinstance(spec, dict) or "data" not in spec:
            raise UserError(f"params.yaml: adapters.{name} needs a data file, e.g. {name}: {{data: data/{name}.jsonl}}")
        for key in spec:
            if key not in AdapterOverrides.model_fields:
                raise UserError(f"params.yaml: unknown key adapters.{name}.{key}; known: data, "
                                f"{', '.join(Finetune.model_fields)}")
        # the overrides over the (already checked) defaults: any error is one of the overrides
        _section("adapters", AdapterOverrides, {**params["finetune"], **spec}, f"adapters.{name}")
        config = adapter_config(params, name)
        _check_template(f"adapters.{name}.template", config["template"])
        missing = [t for t in config["target_modules"] if t not in params["optimize"]["lora_targets"]]
        if missing:
            raise UserError(f"params.yaml: adapters.{name} trains {', '.join(missing)}, which optimize.lora_targets "
                            "lacks; add it there (the base graph gets LoRA inputs only for those projections)")
    if params["quantize"]["calibration"] not in adapters:
        raise UserError(f"params.yaml: quantize.calibration={params['quantize']['calibration']!r} is not an adapter; "
                        f"use one of {', '.join(adapters)}")


def adapter_config(params: dict, name: str) -> dict:
    """One adapter's effective settings as a plain dict: the finetune defaults overridden by adapters.<name>."""
    if name not in params["adapters"]:
        raise UserError(f"no adapter {name!r} in params.yaml; known: {', '.join(params['adapters'])}")
    return {**params["finetune"], **params["adapters"][name]}


def adapter(params: dict, name: str) -> AdapterConfig:
    """One adapter's effective settings, typed (params already passed validate())."""
    return AdapterConfig.model_validate({**adapter_config(params, name), "name": name})


def adapters(params: dict) -> dict[str, AdapterConfig]:
    return {name: adapter(params, name) for name in params["adapters"]}


def section(params: dict, name: str) -> Section:
    """One section of a validated params dict as its typed object, e.g. section(params, "quantize")."""
    return SECTIONS[name].model_validate(params[name])


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; run from the repository root or pass --params")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return validate(params)
def check_model_fit(params: dict, config) -> None:
    """Checks that need the model's config: group size divides the matrices, seq_len fits the context."""
    gs = params["quantize"]["group_size"]
    for name in ("hidden_size", "intermediate_size"):
        size = getattr(config, name, None)
        if size and size % gs:
            divisors = [g for g in (16, 32, 64, 128, 256) if size % g == 0 and config.hidden_size % g == 0]
            raise UserError(
                f"params.yaml: quantize.group_size={gs} does not divide the model's {name}={size}; "
                f"use one of {divisors}"
            )
    ctx = getattr(config, "max_position_embeddings", None)
    lengths = {"finetune.seq_len": params["finetune"]["seq_len"],
               "quantize.calibration_seq_len": params["quantize"]["calibration_seq_len"]}
    lengths.update({f"adapters.{n}.seq_len": a["seq_len"] for n, a in params["adapters"].items() if "seq_len" in a})
    for key, value in lengths.items():
        if ctx and value > ctx:
            raise UserError(f"params.yaml: {key}={value} exceeds the model's context {ctx}")
