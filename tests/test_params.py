import copy

import pytest
import yaml

from conftest import ROOT
from ondevice import params as P
from ondevice.atomic import UserError

GOOD = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(section, key, value):
    p = copy.deepcopy(GOOD)
    p[section][key] = value
    return p


def test_shipped_params_are_valid():
    assert P.validate(copy.deepcopy(GOOD))["quantize"]["algorithm"] == "awq"


@pytest.mark.parametrize("section,key,value,message", [
    ("quantize", "algorithm", "awk", "quantize.algorithm='awk' is not allowed; allowed: awq, rtn, gptq"),
    ("quantize", "awq_grid", "20", "quantize.awq_grid='20' has type str; expected int"),
    ("quantize", "group_size", 48, "quantize.group_size=48 is not allowed"),
    ("finetune", "r", 0, "finetune.r=0 is below the minimum 1"),
    ("finetune", "lr", 5, "finetune.lr=5 is above the maximum 1.0"),
    ("finetune", "length_windows", -1, "finetune.length_windows=-1 is below the minimum 0"),
    ("finetune", "attention", "flash", "finetune.attention='flash' is not allowed; allowed: auto, eager, sdpa"),
    ("finetune", "target_modules", ["q_proj", "qkv"], "finetune.target_modules=['q_proj', 'qkv'] is not allowed"),
    ("finetune", "template", "Q: {prompt}", "finetune.template='Q: {prompt}' lacks a placeholder"),
    ("optimize", "provider", "tpu", "optimize.provider='tpu' is not allowed; allowed: cpu, cuda"),
    ("reference", "algorithms", ["rtn", "int3"],
     "reference.algorithms=['rtn', 'int3'] is not allowed; allowed: awq, rtn, gptq"),
    ("benchmark", "context_lengths", [128, "512"],
     "benchmark.context_lengths=[128, '512'] holds '512'; expected int values"),
    ("benchmark", "context_lengths", [0], "benchmark.context_lengths=[0] is below the minimum 1"),
    ("finetune", "target_modules", [], "finetune.target_modules=[] is empty"),
    ("benchmark", "torch_baseline", 1, "benchmark.torch_baseline=1 has type int; expected bool"),
])
def test_bad_values_name_key_value_and_allowed(section, key, value, message):
    with pytest.raises(UserError) as e:
        P.validate(with_change(section, key, value))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_and_section():
    p = copy.deepcopy(GOOD)
    p["finetune"]["epochs"] = 3
    with pytest.raises(UserError, match="unknown key finetune.epochs"):
        P.validate(p)
    p = copy.deepcopy(GOOD)
    p["train"] = {}
    with pytest.raises(UserError, match="unknown section 'train'"):
        P.validate(p)


def test_group_size_must_divide_model_and_seq_len_fit_context():
    class Config:
        hidden_size, intermediate_size, max_position_embeddings = 576, 1536, 8192

    P.check_model_fit(copy.deepcopy(GOOD), Config)
    with pytest.raises(UserError, match="group_size=128 does not divide the model's hidden_size=576; use one of"):
        P.check_model_fit(with_change("quantize", "group_size", 128), Config)
    with pytest.raises(UserError, match="finetune.seq_len=9000 exceeds the model's context 8192"):
        P.check_model_fit(with_change("finetune", "seq_len", 9000), Config)


def test_unreadable_yaml(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        P.load(bad)


def test_a_stage_gets_its_section_typed_read_only_and_readable_as_a_mapping():
    params = P.validate(copy.deepcopy(GOOD))
    q = P.section(params, "quantize")
    assert q.group_size == q["group_size"] == GOOD["quantize"]["group_size"] and dict(**q) == GOOD["quantize"]
    with pytest.raises(Exception, match="frozen"):
        q.group_size = 64
    name = next(iter(GOOD["adapters"]))
    a = P.adapter(params, name)
    assert a.name == name and a.data == GOOD["adapters"][name]["data"]
    effective = {**GOOD["finetune"], **GOOD["adapters"][name]}  # the finetune defaults, then the adapter's own
    assert {k: a[k] for k in effective} == effective
