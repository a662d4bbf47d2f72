"""`random:phi-3.5-mini`: Phi-3.5-mini's exact shape and vocabulary, with a tokenizer that fits it."""
import json

import pytest

from ondevice.atomic import UserError
from ondevice.sources import random_source


def test_shape_is_phi35_minis():
    config = random_source.shape_config("random:phi-3.5-mini")
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (3072, 8192, 32)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (32, 32, 32064)
    head_dim = config.hidden_size // config.num_attention_heads
    rope = config.rope_parameters
    assert rope["rope_type"] == "longrope" and len(rope["long_factor"]) == len(rope["short_factor"]) == head_dim // 2
    h, i, v, n = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    parameters = 2 * v * h + n * (4 * h * h + 3 * h * i + 2 * h) + h  # embed + head, attention, MLP, norms
    assert parameters == pytest.approx(3.82e9, rel=0.005)


def test_unknown_shape_fails_in_one_line():
    with pytest.raises(UserError, match="random-init shapes: random:phi-3.5-mini"):
        random_source.shape_config("random:llama-70b")


def test_cut_tokenizer_emits_only_ids_the_model_has(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((tokenizer_dir / name).read_text())
    random_source.cut_vocabulary(tmp_path, 32064)
    cut = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\nWhat should I pack for Lisbon in April? Café, naïve, 東京, 🚆<|im_end|>\n"
    ids = cut(text, add_special_tokens=False)["input_ids"]
    assert max(ids) < 32064 and cut.decode(ids) == text  # every byte still encodes: byte-level BPE
    assert len(json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]) == 32064
