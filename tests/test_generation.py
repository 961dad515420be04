"""generate() gives the same token ids as transformers: greedy, sampling with a seed, eos, stop strings, batches."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES
from generation_helpers import load_both, write_model

import autolm
from autolm.errors import GenerationError
from autolm.generation import generate_tokens

PROMPTS = ["hello world, the quick", "the dog", "once upon a time there was"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    directory = write_model(tmp_path_factory.mktemp(request.param), request.param)
    ours, tok, ref, ref_tok = load_both(directory)
    tok.padding_side = ref_tok.padding_side = "left"
    return ours, tok, ref, ref_tok


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    directory = write_model(tmp_path_factory.mktemp("llama"), "llama")
    ours, tok, ref, ref_tok = load_both(directory)
    tok.padding_side = ref_tok.padding_side = "left"
    return ours, tok, ref, ref_tok


def test_greedy_matches_transformers(family):
    ours, tok, ref, _ = family
    inputs = dict(tok(PROMPTS[0], return_tensors="pt"))
    a = ours.generate(**inputs, max_new_tokens=24, eos_token_id=None)
    b = ref.generate(**inputs, max_new_tokens=24, do_sample=False, eos_token_id=None)
    assert a.tolist() == b.tolist()
    assert a.shape == (1, inputs["input_ids"].shape[1] + 24)


def test_left_padded_batch_matches_transformers(family):
    ours, tok, ref, _ = family
    inputs = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    assert inputs["attention_mask"][:, 0].tolist().count(0) == 2  # really mixed lengths
    a = ours.generate(**inputs, max_new_tokens=12, eos_token_id=None)
    b = ref.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert a.tolist() == b.tolist()


def _emitted(model, inputs, step: int) -> int:
    """A token greedy decoding emits at `step` (and not before), to use as an eos that is really reached."""
    new = model.generate(**inputs, max_new_tokens=12, eos_token_id=None)[0, inputs["input_ids"].shape[1] :]
    for s in range(step, len(new)):
        if int(new[s]) not in new[:s].tolist():
            return int(new[s])
    pytest.skip("greedy output repeats one token")


@pytest.mark.parametrize("as_list", [False, True])
def test_eos_int_and_list_match_transformers(family, as_list):
    ours, tok, ref, _ = family
    inputs = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    eos = _emitted(ours, {k: v[:1] for k, v in inputs.items()}, 4)
    eos_arg = [300, eos] if as_list else eos
    a = ours.generate(**inputs, max_new_tokens=12, eos_token_id=eos_arg, pad_token_id=0)
    b = ref.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=eos_arg, pad_token_id=0)
    assert a.tolist() == b.tolist()
    assert a.shape[1] < inputs["input_ids"].shape[1] + 12 or eos in a[:, inputs["input_ids"].shape[1] :]


def test_eos_from_generation_config_and_pad_defaults_to_eos(llama):
    ours, tok, ref, _ = llama
    inputs = dict(tok(PROMPTS[:1], return_tensors="pt"))
    eos = _emitted(ours, inputs, 3)
    saved = ours.generation_config.eos_token_id, ours.generation_config.pad_token_id
    ours.generation_config.eos_token_id, ours.generation_config.pad_token_id = eos, None
    try:
        out = ours.generate(**inputs, max_new_tokens=12)
    finally:
        ours.generation_config.eos_token_id, ours.generation_config.pad_token_id = saved
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert new[-1] == eos and new.count(eos) == 1


def test_stop_strings_match_transformers(family):
    ours, tok, ref, ref_tok = family
    inputs = dict(tok(PROMPTS[:1], return_tensors="pt"))
    P = inputs["input_ids"].shape[1]
    new = ours.generate(**inputs, max_new_tokens=16, eos_token_id=None)[0, P:].tolist()
    # a clean piece of text that first appears around step 6
    stop = None
    for s in range(5, 14):
        piece = tok.decode(new[s : s + 1]).strip()
        text_before = tok.decode(new[:s])
        if piece.isascii() and piece.isprintable() and piece and piece not in text_before:
            stop = piece
            break
    if stop is None:
        pytest.skip("no clean ascii token in the greedy output")
    a = ours.generate(**inputs, max_new_tokens=16, eos_token_id=None, stop_strings=stop, tokenizer=tok)
    b = ref.generate(
        **inputs, max_new_tokens=16, do_sample=False, eos_token_id=None, stop_strings=stop, tokenizer=ref_tok
    )
    assert a.tolist() == b.tolist()
    assert a.shape[1] < P + 16
    assert tok.decode(a[0, P:]).endswith(stop) or stop in tok.decode(a[0, P:])


def test_stop_strings_need_a_tokenizer(llama):
    ours, tok, _, _ = llama
    with pytest.raises(GenerationError, match="tokenizer"):
        ours.generate(tok("the dog", return_tensors="pt").input_ids, stop_strings=["."])


def test_min_new_tokens_matches_transformers(family):
    ours, tok, ref, _ = family
    inputs = dict(tok(PROMPTS[:1], return_tensors="pt"))
    eos = _emitted(ours, inputs, 1)
    a = ours.generate(**inputs, max_new_tokens=10, min_new_tokens=6, eos_token_id=eos)
    b = ref.generate(**inputs, max_new_tokens=10, min_new_tokens=6, eos_token_id=eos, do_sample=False)
    assert a.tolist() == b.tolist()
    assert a.shape[1] - inputs["input_ids"].shape[1] >= 6


def test_seeded_sampling_with_every_warper_matches_transformers(llama):
    ours, tok, ref, _ = llama
    inputs = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    settings = dict(
        do_sample=True, temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.3,
        num_return_sequences=2, max_new_tokens=10, eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(7)
    a = ours.generate(**inputs, **settings)
    torch.manual_seed(7)
    b = ref.generate(**inputs, **settings)
    assert a.shape == (6, inputs["input_ids"].shape[1] + 10)
    assert a.tolist() == b.tolist()


def test_repetition_penalty_greedy_matches_transformers(llama):
    ours, tok, ref, _ = llama
    inputs = dict(tok(PROMPTS[:1], return_tensors="pt"))
    a = ours.generate(**inputs, max_new_tokens=12, repetition_penalty=1.5, eos_token_id=None)
    b = ref.generate(**inputs, max_new_tokens=12, repetition_penalty=1.5, eos_token_id=None, do_sample=False)
    assert a.tolist() == b.tolist()


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(llama):
    ours, tok, _, _ = llama
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids

    def sampled(seed, **kw):
        torch.manual_seed(seed)
        return ours.generate(ids, do_sample=True, max_new_tokens=12, eos_token_id=None, **kw).tolist()

    assert sampled(1) == sampled(1)
    assert sampled(1) != sampled(2)
    greedy = ours.generate(ids, max_new_tokens=12, eos_token_id=None).tolist()
    assert sampled(3, top_k=1) == greedy


def test_static_cache_and_no_cache_equal_dynamic(llama):
    ours, tok, _, _ = llama
    inputs = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    dynamic = ours.generate(**inputs, max_new_tokens=12, eos_token_id=None)
    static = ours.generate(**inputs, max_new_tokens=12, eos_token_id=None, cache_implementation="static")
    nocache = ours.generate(**inputs, max_new_tokens=12, eos_token_id=None, use_cache=False)
    assert static.tolist() == dynamic.tolist() == nocache.tolist()


def test_compiled_decode_equals_dynamic(llama, monkeypatch):
    from autolm.generation import loop

    ours, tok, _, _ = llama
    inputs = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    dynamic = ours.generate(**inputs, max_new_tokens=8, eos_token_id=None)
    # on CPU compile=True takes autolm's native decode step when it covers the model (it is faster than
    # torch.compile's code there); without it, the step goes through torch.compile
    native = ours.generate(**inputs, max_new_tokens=8, eos_token_id=None, compile=True)
    monkeypatch.setattr(loop, "native_decoder", lambda model: None)
    compiled = ours.generate(**inputs, max_new_tokens=8, eos_token_id=None, compile=True)
    assert compiled.tolist() == native.tolist() == dynamic.tolist()


def test_generate_tokens_yields_each_step(llama):
    ours, tok, _, _ = llama
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    steps = list(generate_tokens(ours, ids, max_new_tokens=5, eos_token_id=None))
    assert len(steps) == 5 and all(s.shape == (1,) for s in steps)
    full = ours.generate(ids, max_new_tokens=5, eos_token_id=None)
    assert torch.stack(steps, 1).tolist() == full[:, ids.shape[1] :].tolist()


def test_settings_precedence_and_generation_config(llama):
    ours, tok, _, _ = llama
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    config = autolm.GenerationConfig(max_new_tokens=3)
    assert ours.generate(ids, generation_config=config).shape[1] == ids.shape[1] + 3
    assert ours.generate(ids, generation_config=config, max_new_tokens=4).shape[1] == ids.shape[1] + 4
    assert ours.generate(ids, max_length=ids.shape[1] + 2).shape[1] == ids.shape[1] + 2
    out = ours.generate(ids, max_new_tokens=2, return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape[1] == ids.shape[1] + 2 and len(out.scores) == 2


def test_unknown_argument_is_a_clear_error(llama):
    ours, tok, _, _ = llama
    with pytest.raises(GenerationError, match="max_new_token"):
        ours.generate(tok("the dog", return_tensors="pt").input_ids, max_new_token=5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(num_return_sequences=2), "do_sample"),
        (dict(num_beams=2, num_return_sequences=3), "beam"),
    ],
)
def test_bad_settings(llama, kwargs, match):
    ours, tok, _, _ = llama
    with pytest.raises(GenerationError, match=match):
        ours.generate(tok("the dog", return_tensors="pt").input_ids, **kwargs)


def test_empty_prompt(llama):
    ours, _, _, _ = llama
    with pytest.raises(GenerationError, match="empty"):
        ours.generate(torch.zeros(1, 0, dtype=torch.long))


def test_prompt_longer_than_context_errors_or_truncates(llama):
    ours, _, _, _ = llama
    context = ours.config.max_position_embeddings
    ids = torch.randint(3, 200, (1, context + 5))
    with pytest.raises(GenerationError, match="truncation=True"):
        ours.generate(ids, max_new_tokens=4)
    out = ours.generate(ids, max_new_tokens=4, eos_token_id=None, truncation=True)
    assert out.shape == (1, context)
    assert out[0, : context - 4].tolist() == ids[0, -(context - 4) :].tolist()
