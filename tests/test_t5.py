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
# v1.0: ReLU, tied head (scaled logits); flan: gated GELU, its own head, a deeper decoder; mt5: gated, own head
KINDS = {
    "t5": {},
    "flan": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "num_decoder_layers": 3},
    "mt5": {"feed_forward_proj": "gated-gelu"},
}


def make_t5(kind: str, seed: int = 0):
    import transformers

    mt5 = kind == "mt5"
    config_cls = transformers.MT5Config if mt5 else transformers.T5Config
    model_cls = transformers.MT5ForConditionalGeneration if mt5 else transformers.T5ForConditionalGeneration
    torch.manual_seed(seed)
    model = model_cls(config_cls(**TINY_T5, **KINDS[kind])).eval()
    if kind != "t5":  # a head of its own, as Flan-T5 and mT5 checkpoints have
        model.lm_head.weight = nn.Parameter(torch.randn(TINY_T5["vocab_size"], TINY_T5["d_model"]))
    return model


@pytest.fixture(scope="module", params=sorted(KINDS))
def pair(request, tmp_path_factory):
    """(transformers model, its directory, autolm's model from that directory)."""
    ref = make_t5(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(directory)
    model, info = autolm.AutoModelForSeq2SeqLM.from_pretrained(directory, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    return ref, directory, model


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


def test_config_names_and_defaults():
    config = autolm.T5Config(feed_forward_proj="gated-gelu", d_model=32, num_layers=3, num_heads=2)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 3, 2)
    assert config.num_decoder_layers == 3 and config.is_gated_act and config.dense_act_fn == "gelu_new"
    assert config.decoder_start_token_id == 0 and config.pad_token_id == 0 and config.eos_token_id == 1
    assert autolm.MT5Config().vocab_size == 250112
    with pytest.raises(ValueError, match="feed_forward_proj"):
        autolm.T5Config(feed_forward_proj="fancy-gelu")
