"""The encoder pipelines give what transformers' pipelines give for the same tiny BERT and tokenizer."""

from __future__ import annotations

import pytest
import torch
from bert_helpers import save_bert

import autolm

TEXTS = [
    "Hugging Face is based in Brooklyn, New York.",
    "Unaffable antidisestablishmentarianism bewildered Zürich's xylophonists.",
    "我们在模型加载的时候会看到参数。",
]
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "MISC"}


def _same(got, want, path: str = "") -> None:
    """Equal structure and values; floats within 1e-5."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), path
        for k in want:
            _same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want)):
            _same(a, b, f"{path}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-5, path
    elif isinstance(want, str) or want is None:
        assert got == want, path
    elif isinstance(want, (int,)) and not hasattr(want, "dtype") and isinstance(got, int):
        assert got == want, path
    else:
        assert abs(float(got) - float(want)) <= 1e-5, f"{path}: {got} vs {want}"


def _pipelines(task: str, directory, **kwargs):
    import transformers

    theirs = transformers.pipeline(task, model=str(directory), device="cpu", **kwargs)
    ours = autolm.pipeline(task, model=str(directory), **kwargs)
    return ours, theirs


@pytest.fixture(scope="module")
def classifier_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("textcls")
    return {
        "single": save_bert("BertForSequenceClassification", root / "single", True, num_labels=3),
        "multi": save_bert(
            "BertForSequenceClassification",
            root / "multi",
            True,
            num_labels=3,
            problem_type="multi_label_classification",
        ),
        "regression": save_bert("BertForSequenceClassification", root / "regression", True, num_labels=1),
    }


@pytest.mark.parametrize("kind", ["single", "multi", "regression"])
@pytest.mark.parametrize(
    "call",
    [
        {},
        {"top_k": None},
        {"top_k": 2},
        {"function_to_apply": "none", "top_k": None},
        {"function_to_apply": "sigmoid"},
    ],
)
def test_text_classification_matches_transformers(classifier_dirs, kind, call):
    ours, theirs = _pipelines("text-classification", classifier_dirs[kind])
    # a text pair: the second segment's token_type_ids must reach the model
    inputs = [TEXTS[0], {"text": TEXTS[1], "text_pair": TEXTS[0]}]
    _same(ours(inputs, **call), theirs(inputs, **call))
    _same(ours(TEXTS[2], **call), theirs(TEXTS[2], **call))


def test_text_classification_reads_token_type_ids(classifier_dirs):
    """A pair scores differently once segment B's embeddings are used (they are random here)."""
    ours, theirs = _pipelines("text-classification", classifier_dirs["single"])
    pair = {"text": TEXTS[0], "text_pair": TEXTS[1]}
    got, want = ours(pair, top_k=None), theirs(pair, top_k=None)
    _same(got, want)


@pytest.fixture(scope="module")
def masked_lm_dir(tmp_path_factory):
    return save_bert("BertForMaskedLM", tmp_path_factory.mktemp("mlm") / "m", True)


@pytest.mark.parametrize(
    "inputs",
    [
        "Paris is the [MASK] of France.",
        "The [MASK] sat on the [MASK].",  # two masks: one list per mask
        ["Paris is the [MASK] of France.", "我们在[MASK]型加载的时候"],
    ],
)
@pytest.mark.parametrize(
    "call", [{}, {"top_k": 3}, {"targets": ["capital", "city", "zürich", "blorptastic"]}]
)
def test_fill_mask_matches_transformers(masked_lm_dir, inputs, call):
    ours, theirs = _pipelines("fill-mask", masked_lm_dir)
    _same(ours(inputs, **call), theirs(inputs, **call))


def test_feature_extraction_matches_transformers(tmp_path):
    directory = save_bert("BertModel", tmp_path / "m", True)
    ours, theirs = _pipelines("feature-extraction", directory)
    _same(ours(TEXTS[0]), theirs(TEXTS[0]))
    _same(ours(TEXTS), theirs(TEXTS))
    got, want = ours(TEXTS[1], return_tensors=True), theirs(TEXTS[1], return_tensors=True)
    assert isinstance(got, torch.Tensor) and got.shape == want.shape
    _same(got, want)
    long = " ".join([TEXTS[0]] * 80)
    _same(ours(long, truncation=True), theirs(long, truncation=True))


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    return save_bert(
        "BertForTokenClassification",
        tmp_path_factory.mktemp("ner") / "m",
        True,
        id2label=NER_LABELS,
        label2id={v: k for k, v in NER_LABELS.items()},
    )


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
@pytest.mark.parametrize("ignore_labels", [None, [], ["O", "MISC"]])
def test_token_classification_matches_transformers(ner_dir, strategy, ignore_labels):
    ours, theirs = _pipelines("ner", ner_dir, aggregation_strategy=strategy)
    call = {} if ignore_labels is None else {"ignore_labels": ignore_labels}
    got, want = ours(TEXTS, **call), theirs(TEXTS, **call)
    assert sum(map(len, want)) > 0
    _same(got, want)
    _same(ours(TEXTS[1], **call), theirs(TEXTS[1], **call))
