"""generate() as transformers 5.24's: each case is written once, as a transformers user writes it, and run
under both libraries on the same files; token ids, scores (float32, 1e-5) and exception classes must agree.

Covers the default length, beam search (num_beams, num_return_sequences, length_penalty, early_stopping,
eos lists, padded batches, caches, scores and beam_indices), the logits processors, user processors and
stopping criteria, right padding, compute_transition_scores and bad input.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from generation_helpers import load_both, write_model

import autolm.generation

PROMPTS = ["hello world, the quick", "the dog"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import transformers

    directory = write_model(tmp_path_factory.mktemp("compat"), "llama")
    ours, tok, ref, ref_tok = load_both(directory)
    tok.padding_side = ref_tok.padding_side = "left"
    ours_lib = SimpleNamespace(
        generation=autolm.generation,
        transition=lambda model, *a, **k: autolm.generation.compute_transition_scores(model, *a, **k),
    )
    ref_lib = SimpleNamespace(
        generation=transformers, transition=lambda model, *a, **k: model.compute_transition_scores(*a, **k)
    )
    # a token greedy decoding of PROMPTS[0] reaches at its 4th step, to serve as an eos that ends beams
    ids = ref_tok(PROMPTS[0], return_tensors="pt")
    new = ref.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=None)[
        0, ids.input_ids.shape[1] :
    ]
    emitted = int(new[3])
    return SimpleNamespace(
        pairs=[(ours, tok, ours_lib), (ref, ref_tok, ref_lib)], emitted=emitted, greedy=new.tolist()
    )


def both(models, case):
    """Run `case(model, tokenizer, lib)` under autolm then transformers, from the same seed."""
    results = []
    for model, tok, lib in models.pairs:
        torch.manual_seed(0)
        results.append(case(model, tok, lib))
    return results


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        if a.is_floating_point():
            torch.testing.assert_close(a.float(), b.float(), atol=ATOL, rtol=0)
        else:
            assert a.tolist() == b.tolist()
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def outputs(out) -> dict:
    """The fields a user reads from generate's output (a tensor, or a dict-like output)."""
    if isinstance(out, torch.Tensor):
        return {"sequences": out}
    names = ("sequences", "scores", "logits", "sequences_scores", "beam_indices")
    return {name: getattr(out, name, None) for name in names if getattr(out, name, None) is not None}


def compare(ours, ref):
    a, b = outputs(ours), outputs(ref)
    assert sorted(a) == sorted(b)
    for name in a:
        assert_same(a[name], b[name])


EMIT = "emitted"  # replaced by a token the model really emits
BEAM_DICT = dict(return_dict_in_generate=True, output_scores=True)

GENERATE_CASES = {
    "default_20_new_tokens": ({}, 1, "left"),
    "max_length_kwarg_counts_prompt": (dict(max_length=19), 1, "left"),
    "beams_2": (dict(num_beams=2, max_new_tokens=10), 1, "left"),
    "beams_4": (dict(num_beams=4, max_new_tokens=10), 1, "left"),
    "beams_4_scores": (dict(num_beams=4, max_new_tokens=10, **BEAM_DICT), 1, "left"),
    "beams_2_scores_logits": (
        dict(num_beams=2, max_new_tokens=8, output_logits=True, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_4_return_2": (
        dict(num_beams=4, num_return_sequences=2, max_new_tokens=10, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_4_return_4": (
        dict(num_beams=4, num_return_sequences=4, max_new_tokens=10, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_length_penalty_0": (
        dict(num_beams=4, length_penalty=0.0, eos_token_id=EMIT, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_length_penalty_2": (
        dict(num_beams=4, length_penalty=2.0, eos_token_id=EMIT, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_length_penalty_neg": (
        dict(num_beams=3, length_penalty=-1.0, eos_token_id=EMIT, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_early_stopping_true": (
        dict(num_beams=4, early_stopping=True, eos_token_id=EMIT, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_early_stopping_never": (
        dict(num_beams=4, early_stopping="never", eos_token_id=EMIT, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_never_length_penalty": (
        dict(num_beams=2, early_stopping="never", length_penalty=0.5, eos_token_id=EMIT, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_eos_list": (
        dict(num_beams=4, eos_token_id=[300, EMIT], max_new_tokens=12, **BEAM_DICT),
        1,
        "left",
    ),
    "beams_2_padded_batch": (dict(num_beams=2, max_new_tokens=10, **BEAM_DICT), 2, "left"),
    "beams_4_padded_batch_return_2": (
        dict(num_beams=4, num_return_sequences=2, max_new_tokens=10, eos_token_id=EMIT, **BEAM_DICT),
        2,
        "left",
    ),
    "beams_static_cache": (dict(num_beams=4, max_new_tokens=10, cache_implementation="static"), 2, "left"),
    "beams_no_cache": (dict(num_beams=2, max_new_tokens=8, use_cache=False), 2, "left"),
    "beams_no_repeat_ngram": (dict(num_beams=4, max_new_tokens=12, no_repeat_ngram_size=2), 1, "left"),
    "beams_repetition_penalty": (dict(num_beams=2, max_new_tokens=10, repetition_penalty=1.3), 2, "left"),
    "beams_min_new_tokens": (dict(num_beams=2, min_new_tokens=6, eos_token_id=EMIT, **BEAM_DICT), 1, "left"),
    "beam_sampling": (dict(num_beams=2, do_sample=True, top_k=20, max_new_tokens=8, **BEAM_DICT), 1, "left"),
    "greedy_no_repeat_ngram_2": (dict(max_new_tokens=16, no_repeat_ngram_size=2), 1, "left"),
    "greedy_no_repeat_ngram_3_batch": (dict(max_new_tokens=16, no_repeat_ngram_size=3), 2, "left"),
    "greedy_suppress_tokens": (dict(max_new_tokens=10, suppress_tokens=[EMIT, 5, 6]), 2, "left"),
    "greedy_begin_suppress_tokens": (dict(max_new_tokens=6, begin_suppress_tokens=[EMIT, 7]), 2, "left"),
    "sample_typical_p": (dict(do_sample=True, typical_p=0.8, max_new_tokens=12), 2, "left"),
    "sample_epsilon_cutoff": (dict(do_sample=True, epsilon_cutoff=3e-3, max_new_tokens=12), 2, "left"),
    "sample_eta_cutoff": (dict(do_sample=True, eta_cutoff=3e-3, max_new_tokens=12), 2, "left"),
    "sample_top_k_typical_scores": (
        dict(do_sample=True, top_k=30, typical_p=0.9, temperature=0.7, max_new_tokens=6, **BEAM_DICT),
        1,
        "left",
    ),
    "sample_renormalize_scores": (
        dict(do_sample=True, top_p=0.8, renormalize_logits=True, max_new_tokens=6, **BEAM_DICT),
        1,
        "left",
    ),
    "greedy_scores_and_logits": (dict(max_new_tokens=6, output_logits=True, **BEAM_DICT), 2, "left"),
    "right_padding_greedy": (dict(max_new_tokens=8), 2, "right"),
    "right_padding_sampling": (dict(max_new_tokens=8, do_sample=True), 2, "right"),
    "right_padding_beams": (dict(max_new_tokens=8, num_beams=2, **BEAM_DICT), 2, "right"),
    "right_padding_static": (dict(max_new_tokens=8, cache_implementation="static"), 2, "right"),
    "right_padding_no_cache": (dict(max_new_tokens=6, use_cache=False), 2, "right"),
}


def _resolve(value, emitted):
    if value == EMIT:
        return emitted
    if isinstance(value, list):
        return [_resolve(v, emitted) for v in value]
    return value


@pytest.mark.parametrize("name", list(GENERATE_CASES))
def test_generate_matches_transformers(models, name):
    kwargs, batch, side = GENERATE_CASES[name]
    kwargs = {k: _resolve(v, models.emitted) for k, v in kwargs.items()}

    def case(model, tok, lib):
        tok.padding_side = side
        try:
            inputs = tok(PROMPTS[:batch], return_tensors="pt", padding=True)
            return model.generate(**inputs, **kwargs)
        finally:
            tok.padding_side = "left"

    ours, ref = both(models, case)
    compare(ours, ref)


def test_max_length_from_generation_config_counts_the_prompt(models):
    def case(model, tok, lib):
        saved = model.generation_config.max_length
        model.generation_config.max_length = 18
        try:
            return model.generate(**tok(PROMPTS[0], return_tensors="pt"))
        finally:
            model.generation_config.max_length = saved

    ours, ref = both(models, case)
    compare(ours, ref)
    assert ours.shape[1] == 18


def test_stop_strings_with_beams(models):
    def case(model, tok, lib):
        # a stop string the greedy text really contains (ASCII: no characters split across tokens)
        texts = [tok.decode([t]) for t in models.greedy]
        text = next((t for t in texts if t.strip() and t.isascii() and t.isprintable()), None)
        if text is None:
            pytest.skip("greedy text has no ASCII token to stop at")
        inputs = tok(PROMPTS[0], return_tensors="pt")
        return model.generate(**inputs, num_beams=2, max_new_tokens=10, stop_strings=[text], tokenizer=tok)

    ours, ref = both(models, case)
    compare(ours, ref)


def test_bad_words_single_and_multi_token(models):
    def case(model, tok, lib):
        g = models.greedy
        inputs = tok(PROMPTS, return_tensors="pt", padding=True)
        return model.generate(**inputs, max_new_tokens=10, bad_words_ids=[[g[1]], [g[3], g[4]]])

    ours, ref = both(models, case)
    compare(ours, ref)


def test_bad_words_with_beams(models):
    def case(model, tok, lib):
        g = models.greedy
        inputs = tok(PROMPTS[0], return_tensors="pt")
        return model.generate(**inputs, num_beams=3, max_new_tokens=8, bad_words_ids=[[g[0]], [g[2], g[3]]])

    ours, ref = both(models, case)
    compare(ours, ref)


def _ban_processor(lib, token: int):
    class Ban(lib.generation.LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, token] = -float("inf")
            return scores

    return Ban()


@pytest.mark.parametrize("beams", [1, 2])
def test_user_logits_processor(models, beams):
    def case(model, tok, lib):
        processors = lib.generation.LogitsProcessorList([_ban_processor(lib, models.emitted)])
        inputs = tok(PROMPTS, return_tensors="pt", padding=True)
        return model.generate(**inputs, max_new_tokens=8, num_beams=beams, logits_processor=processors)

    ours, ref = both(models, case)
    compare(ours, ref)


def test_transformers_processor_objects_work_in_autolm(models):
    import transformers

    def case(model, tok, lib):
        processors = transformers.LogitsProcessorList([transformers.NoRepeatNGramLogitsProcessor(2)])
        inputs = tok(PROMPTS, return_tensors="pt", padding=True)
        return model.generate(**inputs, max_new_tokens=12, logits_processor=processors)

    ours, ref = both(models, case)
    compare(ours, ref)


def _stop_on(lib, token: int):
    class StopOn(lib.generation.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == token

    return StopOn()


@pytest.mark.parametrize("beams", [1, 2])
def test_user_stopping_criteria(models, beams):
    def case(model, tok, lib):
        criteria = lib.generation.StoppingCriteriaList([_stop_on(lib, models.emitted)])
        inputs = tok(PROMPTS[0], return_tensors="pt")
        return model.generate(**inputs, max_new_tokens=12, num_beams=beams, stopping_criteria=criteria)

    ours, ref = both(models, case)
    compare(ours, ref)


@pytest.mark.parametrize("source", ["own", "transformers"])
def test_max_length_criteria(models, source):
    import transformers

    def case(model, tok, lib):
        classes = transformers if source == "transformers" else lib.generation
        inputs = tok(PROMPTS[0], return_tensors="pt")
        limit = classes.MaxLengthCriteria(max_length=inputs.input_ids.shape[1] + 5)
        return model.generate(
            **inputs, max_new_tokens=12, stopping_criteria=classes.StoppingCriteriaList([limit])
        )

    ours, ref = both(models, case)
    compare(ours, ref)


TRANSITION_CASES = {
    "greedy": dict(),
    "greedy_normalized": dict(_normalize=True),
    "sampling": dict(do_sample=True, top_k=20),
    "sampling_normalized": dict(do_sample=True, temperature=0.8, _normalize=True),
    "beams": dict(num_beams=4, num_return_sequences=2),
    "beams_eos": dict(num_beams=4, eos_token_id=EMIT, length_penalty=1.0),
}


@pytest.mark.parametrize("name", list(TRANSITION_CASES))
def test_compute_transition_scores(models, name):
    kwargs = {k: _resolve(v, models.emitted) for k, v in TRANSITION_CASES[name].items()}
    normalize = kwargs.pop("_normalize", False)

    def case(model, tok, lib):
        inputs = tok(PROMPTS, return_tensors="pt", padding=True)
        out = model.generate(
            **inputs, max_new_tokens=8, return_dict_in_generate=True, output_scores=True, **kwargs
        )
        beam_indices = getattr(out, "beam_indices", None)
        return lib.transition(model, out.sequences, out.scores, beam_indices, normalize_logits=normalize)

    ours, ref = both(models, case)
    assert_same(ours, ref)


BAD_CASES = {
    "more_returns_than_beams": dict(num_beams=2, num_return_sequences=3),
    "greedy_several_returns": dict(num_return_sequences=2),
    "prompt_reaches_max_length": dict(max_length=3),
}


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_settings_raise_the_same_exception_class(models, name):
    def case(model, tok, lib):
        try:
            model.generate(**tok(PROMPTS[0], return_tensors="pt"), **BAD_CASES[name])
        except Exception as exc:  # noqa: BLE001 - the class is what is compared
            return [base for base in (ValueError, TypeError, AttributeError) if isinstance(exc, base)]
        return None

    ours, ref = both(models, case)
    assert ref and ours == ref


def test_batch_encoding_as_first_argument(models):
    """transformers 5.24 raises AttributeError for generate(batch_encoding); autolm generates as with
    **batch_encoding (the v4 habit), so the outcome is what a user meant."""
    (ours, tok, _), (ref, ref_tok, _) = models.pairs
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    with pytest.raises(AttributeError):
        ref.generate(ref_tok(PROMPTS, return_tensors="pt", padding=True), max_new_tokens=4)
    expected = ref.generate(**ref_tok(PROMPTS, return_tensors="pt", padding=True), max_new_tokens=4)
    assert ours.generate(inputs, max_new_tokens=4).tolist() == expected.tolist()
    assert ours.generate(dict(inputs), max_new_tokens=4).tolist() == expected.tolist()


def test_generation_config_has_transformers_attributes_and_defaults():
    import transformers

    ours, ref = autolm.GenerationConfig(), transformers.GenerationConfig()
    for name in autolm.GenerationConfig.defaults:
        assert getattr(ours, name) == getattr(ref, name), name
    for name, value in autolm.GenerationConfig.global_defaults.items():
        assert ref._get_default_generation_params().get(name, value) == value, name
