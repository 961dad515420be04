"""BERT: same weights -> same outputs and losses as transformers, both ways; the Auto classes pick the
right head; MiniLM with mean pooling equals sentence-transformers' embeddings."""

from __future__ import annotations

import json

import pytest
import torch
from bert_helpers import batch, english_and_chinese, make_bert, minilm_dir, save_bert

import autolm

HEADS = {
    "BertModel": ("last_hidden_state", "pooler_output"),
    "BertForMaskedLM": ("logits",),
    "BertForSequenceClassification": ("logits",),
    "BertForTokenClassification": ("logits",),
    "BertForQuestionAnswering": ("start_logits", "end_logits"),
}
AUTO = {
    "AutoModel": "BertModel",
    "AutoModelForTextEncoding": "BertModel",
    "AutoModelForMaskedLM": "BertForMaskedLM",
    "AutoModelForSequenceClassification": "BertForSequenceClassification",
    "AutoModelForTokenClassification": "BertForTokenClassification",
    "AutoModelForQuestionAnswering": "BertForQuestionAnswering",
}


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("task", sorted(HEADS))
def test_outputs_match_transformers_on_a_padded_two_segment_batch(tmp_path, task):
    ref = make_bert(task)
    ref.save_pretrained(tmp_path)
    model, info = getattr(autolm, task).from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    inputs = batch()
    with torch.no_grad():
        want = ref(**inputs, output_hidden_states=True)
        got = model(**inputs, output_hidden_states=True)
    assert list(got.keys()) == list(want.keys())
    for key in HEADS[task]:
        assert got[key].shape == want[key].shape
        assert _diff(got[key], want[key]) <= 1e-5, key
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert _diff(a, b) <= 1e-5
    # without a mask or segment ids: all tokens seen, segment A everywhere
    with torch.no_grad():
        want, got = ref(input_ids=inputs["input_ids"]), model(input_ids=inputs["input_ids"])
    for key in HEADS[task]:
        assert _diff(got[key], want[key]) <= 1e-5, key


def test_attentions_and_tuples_match_transformers_eager(tmp_path):
    import transformers

    make_bert("BertModel").save_pretrained(tmp_path)
    ref = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    model = autolm.BertModel.from_pretrained(tmp_path)
    inputs = batch()
    with torch.no_grad():
        want = ref(**inputs, output_attentions=True)
        got = model(**inputs, output_attentions=True)
        want_tuple = ref(**inputs, return_dict=False)
        got_tuple = model(**inputs, return_dict=False)
    assert len(got.attentions) == len(want.attentions) == 2
    for a, b in zip(got.attentions, want.attentions):
        assert a.shape == b.shape == (2, 4, 9, 9)
        assert _diff(a, b) <= 1e-5
    assert isinstance(got_tuple, tuple) and len(got_tuple) == len(want_tuple) == 2
    for a, b in zip(got_tuple, want_tuple):
        assert _diff(a, b) <= 1e-5


def _losses(ref, model, **labels) -> tuple[float, float]:
    inputs = batch()
    with torch.no_grad():
        return ref(**inputs, **labels).loss.item(), model(**inputs, **labels).loss.item()


@pytest.mark.parametrize(
    "num_labels, labels, problem, explicit",
    [
        (1, torch.tensor([0.5, -1.25]), "regression", False),  # one label: inferred regression
        (3, torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, 0.5]]), "regression", True),
        (3, torch.tensor([2, 0]), "single_label_classification", False),  # integer labels
        (3, torch.tensor([2, 0]), "single_label_classification", True),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label_classification", False),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label_classification", True),
    ],
)
def test_sequence_classification_loss_per_problem_type(tmp_path, num_labels, labels, problem, explicit):
    overrides = {"num_labels": num_labels, **({"problem_type": problem} if explicit else {})}
    ref = make_bert("BertForSequenceClassification", **overrides)
    ref.save_pretrained(tmp_path)
    model = autolm.BertForSequenceClassification.from_pretrained(tmp_path)
    want, got = _losses(ref, model, labels=labels)
    assert abs(got - want) <= 1e-5
    assert model.config.problem_type == ref.config.problem_type == problem


def test_token_masked_lm_and_question_answering_losses(tmp_path):
    labels = batch()["input_ids"].clone()
    labels[:, ::2] = -100  # ignored positions
    for task, kwargs in [
        ("BertForMaskedLM", {"labels": labels}),
        ("BertForTokenClassification", {"labels": torch.where(labels >= 0, labels % 2, labels)}),
        # an end position past the sequence is clamped and then ignored, as in transformers
        (
            "BertForQuestionAnswering",
            {"start_positions": torch.tensor([1, 3]), "end_positions": torch.tensor([4, 50])},
        ),
    ]:
        ref = make_bert(task)
        ref.save_pretrained(tmp_path / task)
        model = getattr(autolm, task).from_pretrained(tmp_path / task)
        want, got = _losses(ref, model, **kwargs)
        assert abs(got - want) <= 1e-5, task


@pytest.mark.parametrize("task", sorted(HEADS))
def test_save_pretrained_loads_in_transformers_with_no_missing_keys(tmp_path, task):
    import transformers

    make_bert(task, seed=3).save_pretrained(tmp_path / "ref")
    model = getattr(autolm, task).from_pretrained(tmp_path / "ref")
    inputs = batch()
    with torch.no_grad():
        got = model(**inputs)  # after a forward, q/k/v share one fused buffer: saving must not mind
    model.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [task]
    back, info = getattr(transformers, task).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        want = back.eval()(**inputs)
    for key in HEADS[task]:
        assert _diff(got[key], want[key]) <= 1e-5, key


def test_masked_lm_decoder_is_tied_to_the_word_embeddings(tmp_path):
    make_bert("BertForMaskedLM").save_pretrained(tmp_path)
    model = autolm.BertForMaskedLM.from_pretrained(tmp_path)
    decoder = model.get_output_embeddings()
    assert decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert decoder.bias is model.cls.predictions.bias


@pytest.mark.parametrize("auto_name", sorted(AUTO))
def test_auto_classes_pick_the_bert_class(tmp_path, auto_name):
    save_bert("BertModel", tmp_path)  # a base checkpoint: heads load it under `bert.`
    model = getattr(autolm, auto_name).from_pretrained(tmp_path)
    assert type(model).__name__ == AUTO[auto_name]
    assert type(autolm.AutoConfig.from_pretrained(tmp_path)).__name__ == "BertConfig"
    if auto_name != "AutoModel":
        assert model.base_model.embeddings.word_embeddings.weight.abs().sum() > 0


def test_training_gradients_match_transformers(tmp_path):
    """Gradients flow into query, key and value through the fused projection (dropout off)."""
    ref = make_bert(
        "BertForSequenceClassification", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    ref.save_pretrained(tmp_path)
    model = autolm.BertForSequenceClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        model(**batch())  # the inference layout first: training must still reach the same Parameters
    ref.train(), model.train()
    labels = torch.tensor([1, 0])
    ref(**batch(), labels=labels).loss.backward()
    model(**batch(), labels=labels).loss.backward()
    for name in ("query", "key", "value"):
        a = getattr(model.bert.encoder.layer[0].attention.self, name).weight.grad
        b = getattr(ref.bert.encoder.layer[0].attention.self, name).weight.grad
        assert a is not None and _diff(a, b) <= 1e-5, name


def test_minilm_mean_pooling_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    path = minilm_dir()
    sentences = english_and_chinese()
    want = SentenceTransformer(str(path), device="cpu").encode(sentences, normalize_embeddings=True)
    tokenizer = autolm.AutoTokenizer.from_pretrained(path)
    model = autolm.AutoModel.from_pretrained(path)
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    got = torch.nn.functional.normalize(pooled, p=2, dim=1)
    assert got.shape == want.shape
    assert _diff(got, torch.from_numpy(want)) <= 1e-5


def test_masked_lm_resize_keeps_the_tie_and_the_old_scores(tmp_path):
    ref = make_bert("BertForMaskedLM")
    ref.save_pretrained(tmp_path)
    model = autolm.BertForMaskedLM.from_pretrained(tmp_path)
    ref.resize_token_embeddings(120, mean_resizing=False)
    model.resize_token_embeddings(120, mean_resizing=False)
    predictions = model.cls.predictions
    assert predictions.decoder.bias is predictions.bias and predictions.bias.shape == (120,)
    assert predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert _diff(predictions.bias, ref.cls.predictions.bias) == 0  # old entries kept, new ones zero
    with torch.no_grad():
        got, want = model(**batch()).logits, ref(**batch()).logits
    assert got.shape == want.shape == (2, 9, 120)
    assert _diff(got[..., :99], want[..., :99]) <= 1e-5


def test_long_batches_take_the_fused_output_pass_and_match_transformers(tmp_path, monkeypatch):
    """Inference on 64+ token rows runs each product through oneDNN where it is faster (the GELU in the same
    pass) and each output's residual and LayerNorm in one native pass (kernels.add_norm); outputs still
    equal transformers'."""
    from autolm import kernels

    if not kernels.ensure_loaded():
        pytest.skip("native kernels cannot be built here")
    calls, products = [], []
    real, real_linear = kernels.add_norm, kernels.encoder_linear
    monkeypatch.setattr(kernels, "add_norm", lambda *a, **k: calls.append(1) or real(*a, **k))

    def counted_linear(*args, **kwargs):
        out = real_linear(*args, **kwargs)
        products.append(out is not None)
        return out

    monkeypatch.setattr(kernels, "encoder_linear", counted_linear)
    ref = make_bert("BertModel")
    ref.save_pretrained(tmp_path)
    model = autolm.BertModel.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 99, (4, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 25:] = 0
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    layers = ref.config.num_hidden_layers
    assert len(calls) == 2 * layers
    # q/k/v, intermediate (+ GELU) and both outputs through oneDNN where it is the faster product (AVX-512)
    assert products == [kernels._onednn_linear_ok()] * (4 * layers)
    assert _diff(got, want) <= 1e-5
    # with gradients the torch code runs, as before
    calls.clear()
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert calls == [] and out.requires_grad and _diff(out.detach(), want) <= 1e-5
