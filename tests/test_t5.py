"""T5 / Flan-T5 / mT5: same weights -> same logits, hidden states, losses and generated ids as transformers."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import autolm

TINY_T5 = dict(
    vocab_size=64,
    d_model=16,
    d_kv=4,
    d_ff=24,
    num_layers=2,
    num_heads=4,
    decoder_start_token_id=0,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)
# v1.0: ReLU, tied head (scaled logits); flan: gated GELU, its own head; mt5: gated, its own head
KINDS = {
    "t5": {},
    "flan": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    "mt5": {"feed_forward_proj": "gated-gelu"},
}


def make_t5(kind: str, seed: int = 0, **overrides):
    import transformers

    mt5 = kind == "mt5"
    config_cls = transformers.MT5Config if mt5 else transformers.T5Config
    model_cls = transformers.MT5ForConditionalGeneration if mt5 else transformers.T5ForConditionalGeneration
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY_T5, **KINDS[kind], **overrides})).eval()
    if kind != "t5":  # a head of its own, as Flan-T5 and mT5 checkpoints have
        model.lm_head.weight = nn.Parameter(torch.randn(TINY_T5["vocab_size"], TINY_T5["d_model"]))
    return model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """kind -> (transformers model, its directory, autolm's model from that directory), built on first use."""
    cache: dict[str, tuple] = {}

    def get(kind: str):
        if kind not in cache:
            ref = make_t5(kind)
            directory = tmp_path_factory.mktemp(kind)
            ref.save_pretrained(directory)
            model, info = autolm.AutoModelForSeq2SeqLM.from_pretrained(directory, output_loading_info=True)
            assert info["missing_keys"] == [] and info["unexpected_keys"] == []
            cache[kind] = ref, directory, model
        return cache[kind]

    return get


@pytest.fixture(params=sorted(KINDS))
def pair(request, built):
    return built(request.param)


# generation runs on the tied ReLU and the untied gated kinds (mT5 differs from Flan only in its logits' scale)
@pytest.fixture(params=["flan", "t5"])
def gen_pair(request, built):
    return built(request.param)


def batch(seed: int = 1):
    """Encoder ids with right and left padding, decoder ids with a padded row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, TINY_T5["vocab_size"], (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, :3] = 0
    dec = torch.randint(2, TINY_T5["vocab_size"], (3, 5), generator=g)
    dec_mask = torch.ones_like(dec)
    dec_mask[1, 4:] = 0
    return ids, mask, dec, dec_mask


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_logits_and_hidden_states_match_transformers(pair):
    ref, _, model = pair
    assert type(model).__name__ == type(ref).__name__
    ids, mask, dec, dec_mask = batch()
    kwargs = dict(attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True, **kwargs)
        got = model(ids, output_hidden_states=True, **kwargs)
    assert diff(got.logits, expected.logits) <= 1e-5
    assert diff(got.encoder_last_hidden_state, expected.encoder_last_hidden_state) <= 1e-5
    for name in ("encoder_hidden_states", "decoder_hidden_states"):
        assert len(got[name]) == len(expected[name])
        for a, b in zip(got[name], expected[name]):
            assert diff(a, b) <= 1e-5


def test_loss_from_labels_matches_transformers(pair):
    ref, _, model = pair
    ids, mask, labels, _ = batch(2)
    labels[1, 3:] = -100
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, labels=labels)
        got = model(ids, attention_mask=mask, labels=labels)
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-5
    assert diff(got.logits, expected.logits) <= 1e-5


def test_attentions_match_transformers_eager(pair):
    ref, directory, _ = pair
    import transformers

    eager = transformers.AutoModelForSeq2SeqLM.from_pretrained(directory, attn_implementation="eager").eval()
    model = autolm.AutoModelForSeq2SeqLM.from_pretrained(directory, attn_implementation="eager")
    ids, mask, dec, _ = batch(3)
    with torch.no_grad():
        expected = eager(ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
        got = model(ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
    for name in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        assert len(got[name]) == len(expected[name])
        for a, b in zip(got[name], expected[name]):
            assert diff(a, b) <= 1e-5


def test_cached_decoding_matches_the_full_forward(pair):
    _, _, model = pair
    ids, mask, dec, _ = batch(4)
    with torch.no_grad():
        first = model(ids, attention_mask=mask, decoder_input_ids=dec[:, :3], use_cache=True)
        step = model(
            encoder_outputs=(first.encoder_last_hidden_state,),
            attention_mask=mask,
            decoder_input_ids=dec[:, 3:4],
            past_key_values=first.past_key_values,
        )
        full = model(ids, attention_mask=mask, decoder_input_ids=dec[:, :4])
    assert diff(step.logits[:, -1], full.logits[:, -1]) <= 1e-5


def test_encoder_and_base_models_match_transformers(pair):
    ref, directory, _ = pair
    import transformers

    prefix = "MT5" if type(ref).__name__.startswith("MT5") else "T5"
    ids, mask, dec, _ = batch(5)
    encoder = autolm.AutoModelForTextEncoding.from_pretrained(directory)
    ref_encoder = getattr(transformers, f"{prefix}EncoderModel").from_pretrained(directory).eval()
    base = autolm.AutoModel.from_pretrained(directory)
    ref_base = getattr(transformers, f"{prefix}Model").from_pretrained(directory).eval()
    assert type(encoder).__name__ == f"{prefix}EncoderModel" and type(base).__name__ == f"{prefix}Model"
    with torch.no_grad():
        got = encoder(ids, attention_mask=mask).last_hidden_state
        assert diff(got, ref_encoder(ids, attention_mask=mask).last_hidden_state) <= 1e-5
        got = base(ids, attention_mask=mask, decoder_input_ids=dec).last_hidden_state
        expected = ref_base(ids, attention_mask=mask, decoder_input_ids=dec).last_hidden_state
        assert diff(got, expected) <= 1e-5


def test_save_pretrained_loads_in_transformers(pair, tmp_path):
    ref, directory, model = pair
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    original = json.loads((directory / "config.json").read_text())
    for key, value in original.items():  # lossless: every key of the file survives
        if key not in ("transformers_version", "dtype", "architectures"):
            assert saved[key] == value, key
    back, info = type(ref).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask, dec, _ = batch(6)
    with torch.no_grad():
        assert diff(back(ids, attention_mask=mask, decoder_input_ids=dec).logits,
                    ref(ids, attention_mask=mask, decoder_input_ids=dec).logits) == 0  # fmt: skip


def test_a_classic_untied_config_reads_as_transformers(tmp_path):
    """Flan-T5's own config.json says tie_word_embeddings false and has no scale_decoder_outputs."""
    ref = make_t5("flan")
    ref.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("scale_decoder_outputs")
    config["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    import transformers

    ref = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    model = autolm.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert model.config.scale_decoder_outputs is False and model.lm_head.weight is not model.shared.weight
    ids, mask, dec, _ = batch(7)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, decoder_input_ids=dec).logits
        assert diff(got, ref(ids, attention_mask=mask, decoder_input_ids=dec).logits) <= 1e-5


def test_a_decoder_deeper_than_the_encoder(tmp_path):
    ref = make_t5("flan", num_decoder_layers=3)
    ref.save_pretrained(tmp_path)
    model = autolm.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert len(model.decoder.block) == 3 and len(model.encoder.block) == 2
    ids, mask, dec, dec_mask = batch(8)
    kwargs = dict(attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    with torch.no_grad():
        assert diff(model(ids, **kwargs).logits, ref(ids, **kwargs).logits) <= 1e-5


def test_config_names_and_defaults():
    config = autolm.T5Config(feed_forward_proj="gated-gelu", d_model=32, num_layers=3, num_heads=2)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 3, 2)
    assert config.num_decoder_layers == 3 and config.is_gated_act and config.dense_act_fn == "gelu_new"
    assert config.decoder_start_token_id == 0 and config.pad_token_id == 0 and config.eos_token_id == 1
    assert autolm.MT5Config().vocab_size == 250112
    with pytest.raises(ValueError, match="feed_forward_proj"):
        autolm.T5Config(feed_forward_proj="fancy-gelu")


# --- generation -------------------------------------------------------------------------------------

GENERATE = {
    "default_length": {},
    "max_length": {"max_length": 7},
    "min_new_tokens": {"max_new_tokens": 10, "min_new_tokens": 8},
    "sampled": {"do_sample": True, "top_k": 10, "top_p": 0.9, "temperature": 0.7, "max_new_tokens": 10},
    "sampled_many": {"do_sample": True, "num_return_sequences": 2, "max_new_tokens": 6},
    "beams": {"num_beams": 3, "max_new_tokens": 8},
    "beams_options": {
        "num_beams": 4,
        "num_return_sequences": 2,
        "length_penalty": 0.5,
        "early_stopping": True,
        "max_new_tokens": 9,
    },
    "beam_sampling": {"num_beams": 3, "do_sample": True, "max_new_tokens": 6},
    "penalties": {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "max_new_tokens": 10},
}


def early_eos(model, ids, mask) -> int:
    """A token greedy decoding emits early, used as eos so rows finish at different steps."""
    return int(model.generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=None)[0, 3])


@pytest.mark.parametrize("case", sorted(GENERATE))
def test_generate_gives_the_ids_of_transformers(gen_pair, case):
    ref, _, model = gen_pair
    ids, mask, _, _ = batch(9)
    kwargs = dict(GENERATE[case])
    # the file's eos (rarely drawn by a random model), then one drawn early: rows finish at different steps
    for eos in (
        (None, early_eos(model, ids, mask))
        if case in ("default_length", "beams")
        else (early_eos(model, ids, mask),)
    ):
        if eos is not None:
            kwargs["eos_token_id"] = eos
        torch.manual_seed(0)
        expected = ref.generate(ids, attention_mask=mask, **kwargs)
        torch.manual_seed(0)
        got = model.generate(ids, attention_mask=mask, **kwargs)
        assert got.shape == expected.shape and torch.equal(got, expected), (eos, got, expected)


def test_generate_scores_and_decoder_prompt_as_transformers(gen_pair):
    ref, _, model = gen_pair
    ids, mask, dec, _ = batch(10)
    kwargs = dict(max_new_tokens=5, return_dict_in_generate=True, output_scores=True)
    expected = ref.generate(ids, attention_mask=mask, **kwargs)
    got = model.generate(ids, attention_mask=mask, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores)
    assert all(diff(a, b) <= 1e-5 for a, b in zip(got.scores, expected.scores))
    # decoder_input_ids continue a decoder prompt (the start token is put in front)
    prompt = dec[:, :2]
    expected = ref.generate(ids, attention_mask=mask, decoder_input_ids=prompt, max_new_tokens=4)
    got = model.generate(ids, attention_mask=mask, decoder_input_ids=prompt, max_new_tokens=4)
    assert torch.equal(got, expected)
    # encoder_outputs computed by the caller
    with torch.no_grad():
        encoded = model.get_encoder()(ids, attention_mask=mask)
    again = model.generate(encoder_outputs=encoded, attention_mask=mask, max_new_tokens=4)
    assert torch.equal(again, model.generate(ids, attention_mask=mask, max_new_tokens=4))


class IdsTokenizer:
    """A stand-in tokenizer: each id is a word."""

    def decode(self, ids, skip_special_tokens: bool = False, **kwargs) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return " ".join(f"t{i}" for i in ids if not (skip_special_tokens and i in (0, 1)))


def test_streamers_get_the_decoder_tokens(built):
    import io
    import threading

    _, _, model = built("flan")
    ids, mask, _, _ = batch(11)
    out = io.StringIO()
    generated = model.generate(
        ids[:1], max_new_tokens=8, streamer=autolm.TextStreamer(IdsTokenizer(), file=out)
    )
    assert generated[0, 0] == model.config.decoder_start_token_id
    assert out.getvalue() == IdsTokenizer().decode(generated[0]) + "\n"

    streamer = autolm.TextIteratorStreamer(IdsTokenizer(), skip_prompt=True, timeout=30)
    result = {}

    def work():
        result["ids"] = model.generate(ids[:1], max_new_tokens=8, eos_token_id=None, streamer=streamer)

    thread = threading.Thread(target=work)
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == IdsTokenizer().decode(result["ids"][0, 1:])


def test_no_cache_decoding_gives_the_same_ids(built):
    _, _, model = built("flan")
    ids, mask, _, _ = batch(12)
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=6)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=6, use_cache=False), cached)


# --- the native decode step (kernels/decoder.py): the decoder's layers in one C call per token -----


@pytest.mark.parametrize("case", ["greedy", "sampled", "beams"])
def test_generation_on_the_native_step_matches_transformers(gen_pair, case, native_steps):
    """A padded batch (encoder padding on both sides, rows finishing at different steps) decodes on the
    native step, cross-attention and relative positions included, to transformers' ids."""
    ref, _, model = gen_pair
    ids, mask, _, _ = batch(13)
    # the tiny tied model's greedy choice is the pad token 0 throughout: suppressed, so ids vary
    kwargs = {"max_new_tokens": 12, "suppress_tokens": [0]}
    kwargs |= {"sampled": GENERATE["sampled"], "beams": GENERATE["beams"]}.get(case, {})
    torch.manual_seed(3)
    kwargs["eos_token_id"] = int(model.generate(ids, attention_mask=mask, **kwargs, eos_token_id=None)[0, 3])
    torch.manual_seed(3)
    expected = ref.generate(ids, attention_mask=mask, **kwargs)
    native_steps.clear()
    torch.manual_seed(3)
    got = model.generate(ids, attention_mask=mask, **kwargs)
    assert torch.equal(got, expected), (got, expected)
    assert native_steps or case == "beams"  # beam search builds its own step, not counted here


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["flan", "t5", "mt5"])
def test_native_step_computes_what_the_torch_forward_does(built, kind, dtype, native_kernels):
    """One decode step through the C kernel equals the model's own forward on the same cache (a padded
    decoder prompt, a padded encoder input; the tied head's d_model**-0.5 scaling where it applies)."""
    import copy

    from autolm.kernels.decoder import native_decoder

    _, directory, _ = built(kind)
    model = autolm.AutoModelForSeq2SeqLM.from_pretrained(directory, dtype=dtype)
    ids, mask, dec, dec_mask = batch(14)
    token = torch.tensor([5, 7, 9])
    with torch.no_grad():
        first = model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
        cache = first.past_key_values
        full_mask = torch.cat([dec_mask, torch.ones(3, 1, dtype=dec_mask.dtype)], 1)
        expected = model(
            encoder_outputs=(first.encoder_last_hidden_state,),
            attention_mask=mask,
            decoder_input_ids=token[:, None],
            decoder_attention_mask=full_mask,
            past_key_values=copy.deepcopy(cache),
        ).logits[:, -1]
        native = native_decoder(model)
        assert native is not None
        got = native.step(
            token,
            None,
            full_mask,
            cache.self_attention_cache,
            cross_kv=cache.cross_attention_cache,
            cross_mask=mask,
        )
    tolerance = 1e-5 if dtype == torch.float32 else 0.1
    assert diff(got, expected) <= tolerance


def test_hooks_and_subclasses_keep_the_torch_path(built, native_kernels):
    """A forward hook on a decoder module still runs every step, and a subclassed feed-forward's own code
    is what decodes: the native step declines such models."""
    from autolm.kernels.decoder import native_decoder

    _, directory, model = built("flan")
    ids, mask, _, _ = batch(15)
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=5, eos_token_id=None)
    calls = []
    handle = model.decoder.block[1].layer[1].register_forward_hook(lambda *_: calls.append(1))
    try:
        assert native_decoder(model) is None
        assert torch.equal(
            model.generate(ids, attention_mask=mask, max_new_tokens=5, eos_token_id=None), expected
        )
    finally:
        handle.remove()
    assert len(calls) == 5  # the prompt's step and the four decoded after it
    assert native_decoder(model) is not None

    from autolm.models import t5

    class Doubled(t5.T5DenseGatedActDense):
        def forward(self, x):
            return 2 * super().forward(x)

    other = autolm.AutoModelForSeq2SeqLM.from_pretrained(directory)
    for block in other.decoder.block:
        block.layer[-1].DenseReluDense.__class__ = Doubled
    assert native_decoder(other) is None
    with torch.no_grad():
        logits = other(ids, attention_mask=mask, decoder_input_ids=torch.zeros(3, 1, dtype=torch.long)).logits
    got = other.generate(
        ids, attention_mask=mask, max_new_tokens=1, output_logits=True, return_dict_in_generate=True
    )
    assert diff(got.logits[0], logits[:, -1]) == 0
