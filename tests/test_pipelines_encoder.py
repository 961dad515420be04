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


QUESTION = "Where is Hugging Face based?"
CONTEXT = (
    "Hugging Face is a company based in New York City. Its headquarters are in DUMBO, therefore very close to "
    "the Manhattan Bridge. The antidisestablishmentarian founders moved there from Paris in 2016, 我们在模型加载."
)


def _reference_answers(
    directory, question, context, top_k=1, max_answer_len=15, max_seq_len=384, doc_stride=128
):
    """Brute force over transformers' QA model: every span of context tokens in every window, scored
    p(start) * p(end) with the probabilities over the context tokens and [CLS]; the empty answer scored
    by [CLS]."""
    import transformers

    model = transformers.BertForQuestionAnswering.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    enc = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
    )
    answers, null = [], float("inf")
    for w, ids in enumerate(enc["input_ids"]):
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([enc["token_type_ids"][w]])
            )
        in_context = [i for i, s in enumerate(enc.sequence_ids(w)) if s == 1]
        usable = [0, *in_context]
        p_start = dict(zip(usable, out.start_logits[0, usable].softmax(-1).tolist()))
        p_end = dict(zip(usable, out.end_logits[0, usable].softmax(-1).tolist()))
        null = min(null, p_start[0] * p_end[0])
        spans = sorted(
            (
                (p_start[s] * p_end[e], s, e)
                for s in in_context
                for e in in_context
                if s <= e < s + max_answer_len
            ),
            reverse=True,
        )[:top_k]
        for score, s, e in spans:
            lo = enc.word_to_chars(w, enc.token_to_word(w, s), sequence_index=1).start
            hi = enc.word_to_chars(w, enc.token_to_word(w, e), sequence_index=1).end
            answers.append({"score": score, "start": lo, "end": hi, "answer": context[lo:hi]})
    return answers, null, len(enc["input_ids"])


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory):
    return save_bert("BertForQuestionAnswering", tmp_path_factory.mktemp("qa") / "m", True)


@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("windows", [None, {"max_seq_len": 40, "doc_stride": 12}])
@pytest.mark.parametrize("impossible", [False, True])
def test_question_answering_matches_a_brute_force_search(qa_dir, top_k, windows, impossible):
    windows = windows or {}
    qa = autolm.pipeline("question-answering", model=str(qa_dir))
    got = qa(question=QUESTION, context=CONTEXT, top_k=top_k, handle_impossible_answer=impossible, **windows)
    answers, null, n_windows = _reference_answers(qa_dir, QUESTION, CONTEXT, top_k=top_k, **windows)
    assert n_windows == (1 if not windows else 2)
    if impossible:
        answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
    want = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
    _same(got, want[0] if top_k == 1 else want)
    # the same through a dict and a list of dicts
    inputs = {"question": QUESTION, "context": CONTEXT}
    _same(qa(inputs, top_k=top_k, handle_impossible_answer=impossible, **windows), got)
    _same(qa([inputs, inputs], top_k=top_k, handle_impossible_answer=impossible, **windows), [got, got])


def test_question_answering_max_answer_len(qa_dir):
    qa = autolm.pipeline("question-answering", model=str(qa_dir), max_answer_len=1)
    got = qa(question=QUESTION, context=CONTEXT, top_k=5)
    answers, _, _ = _reference_answers(qa_dir, QUESTION, CONTEXT, top_k=5, max_answer_len=1)
    _same(got, sorted(answers, key=lambda a: a["score"], reverse=True)[:5])
    assert all(" " not in a["answer"] for a in got)
