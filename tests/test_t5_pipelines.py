"""text2text-generation, summarization and translation pipelines on a tiny random T5 with a trained T5 tokenizer.

Transformers 5 removed these pipelines, so the reference is what transformers 4's pipelines did, written out on
transformers 5.24's own `generate` and tokenizer (`reference` below): the task's prefix and settings from
`config.task_specific_params`, inputs padded per batch, `decode(skip_special_tokens=True)`, a list of one-dict
results flattened. (That recipe was checked against transformers 4.46's pipelines on the same model: equal.)
"""

from __future__ import annotations

import copy

import pytest
from test_t5_tokenizer import SENTINELS, SPECIALS, train_spiece, write_json

import autolm
from autolm.errors import GenerationError

TEXTS = [
    "The house is wonderful.",
    "我们今天去哪里吃饭？",
    "short",
    "A longer sentence about model weights and the layers of the German house, with numbers 1234.",
]
TASK_PARAMS = {
    "summarization": {
        "prefix": "summarize: ",
        "num_beams": 3,
        "max_length": 17,
        "min_length": 5,
        "no_repeat_ngram_size": 2,
        "length_penalty": 2.0,
        "early_stopping": True,
    },
    "translation_en_to_de": {"prefix": "translate English to German: ", "max_length": 15, "num_beams": 2},
    "translation_en_to_fr": {"prefix": "translate English to French: ", "max_length": 12},
}
NAMES = {"text2text-generation": "generated", "summarization": "summary"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf", reason="transformers reads spiece.model through protobuf")
    root = tmp_path_factory.mktemp("t5pipe")
    (root / "spm").mkdir()
    (root / "spm/spiece.model").write_bytes(train_spiece())
    write_json(
        root / "spm/tokenizer_config.json",
        {
            "tokenizer_class": "T5Tokenizer",
            "extra_ids": 100,
            "additional_special_tokens": SENTINELS,
            **SPECIALS,
        },
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "spm")
    config = transformers.T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        initializer_factor=10.0,  # large random weights: the encoder's input shows in what is generated
        task_specific_params=TASK_PARAMS,
    )
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # the decoder start <pad> (tied embedding) would otherwise predict itself forever
        model.shared.weight[0] *= 0.01
    directory = root / "t5"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def ref(model_dir):
    import transformers

    model = transformers.T5ForConditionalGeneration.from_pretrained(model_dir, dtype="float32").eval()
    return model, transformers.AutoTokenizer.from_pretrained(model_dir)


def reference(
    task_key, ref, inputs, batch_size=1, return_tensors=False, clean_up_tokenization_spaces=False, **kw
):
    """Transformers 4's Text2TextGenerationPipeline (and its two subclasses) on transformers 5's generate."""
    model, tok = ref
    params = dict(copy.deepcopy(model.config.task_specific_params or {}).get(task_key) or {})
    prefix = params.pop("prefix", None) or ""
    name = NAMES.get(task_key, "translation")
    items = [inputs] if isinstance(inputs, str) else inputs
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        enc = tok([prefix + t for t in chunk], padding=True, return_tensors="pt")
        ids = model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **{**params, **kw}
        )
        n = ids.shape[0] // len(chunk)
        for i in range(len(chunk)):
            rows = ids[i * n : (i + 1) * n]
            if return_tensors:
                out.append([{f"{name}_token_ids": r.tolist()} for r in rows])
            else:
                cleanup = clean_up_tokenization_spaces
                texts = [
                    tok.decode(r, skip_special_tokens=True, clean_up_tokenization_spaces=cleanup)
                    for r in rows
                ]
                out.append([{f"{name}_text": text} for text in texts])
    if isinstance(inputs, str):
        return out[0]
    return [r[0] for r in out] if all(len(r) == 1 for r in out) else out


def plain(result):
    """Token id tensors -> lists, so results compare with ==."""
    if isinstance(result, list):
        return [plain(r) for r in result]
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}


@pytest.fixture(scope="module")
def pipes(model_dir):
    cache = {}

    def get(task: str):
        if task not in cache:
            cache[task] = autolm.pipeline(task, model=str(model_dir), dtype="float32")
        return cache[task]

    return get


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_new_tokens": 8},
        {"max_new_tokens": 8, "batch_size": 3},
        {"max_new_tokens": 6, "num_beams": 3, "num_return_sequences": 2},
        {"max_new_tokens": 6, "return_tensors": True},
        {"max_new_tokens": 6, "return_tensors": True, "batch_size": 2},
        {"max_new_tokens": 10, "no_repeat_ngram_size": 2, "clean_up_tokenization_spaces": True},
    ],
)
def test_text2text_generation_matches_reference(pipes, ref, kwargs):
    pipe = pipes("text2text-generation")
    assert plain(pipe(TEXTS[0], **kwargs)) == reference("text2text-generation", ref, TEXTS[0], **kwargs)
    got = plain(pipe(TEXTS, **kwargs))
    assert got == reference("text2text-generation", ref, TEXTS, **kwargs)
    key = "generated_token_ids" if kwargs.get("return_tensors") else "generated_text"
    flat = [r for item in got for r in (item if isinstance(item, list) else [item])]
    assert all(set(r) == {key} for r in flat)


def test_outputs_say_something(pipes):
    texts = [r["generated_text"] for r in pipes("text2text-generation")(TEXTS, max_new_tokens=8)]
    assert len(set(texts)) > 1 and all(texts), texts  # the fixture's model is not stuck on one token


def test_summarization_applies_the_task_settings(pipes, ref):
    pipe = pipes("summarization")
    assert pipe.prefix == "summarize: "
    got = pipe(TEXTS)
    assert got == reference("summarization", ref, TEXTS)
    assert all(set(r) == {"summary_text"} for r in got)
    # call arguments win over the task's settings
    assert pipe(TEXTS[3], max_length=10, min_length=2) == reference(
        "summarization", ref, TEXTS[3], max_length=10, min_length=2
    )
    ids = pipe(TEXTS[3], return_tensors=True)[0]["summary_token_ids"]
    assert 5 <= len(ids) <= 17  # min_length / max_length of task_specific_params


@pytest.mark.parametrize(
    ("task", "key"),
    [
        ("translation_en_to_de", "translation_en_to_de"),
        ("translation_en_to_fr", "translation_en_to_fr"),
        ("translation", "translation_en_to_de"),  # the model's first translation_* settings
    ],
)
def test_translation_matches_reference(pipes, ref, task, key):
    pipe = pipes(task)
    assert pipe.prefix == TASK_PARAMS[key]["prefix"]
    got = pipe(TEXTS, batch_size=2)
    assert got == reference(key, ref, TEXTS, batch_size=2)
    assert all(set(r) == {"translation_text"} for r in got)
    assert pipe(TEXTS[0], max_new_tokens=4) == reference(key, ref, TEXTS[0], max_new_tokens=4)


def test_stop_sequence_and_pipeline_defaults(model_dir, ref, pipes):
    pipe = pipes("text2text-generation")
    first = pipe(TEXTS[0], max_new_tokens=8, return_tensors=True)[0]["generated_token_ids"].tolist()
    stop = ref[1].decode([first[3]])
    stop_id = ref[1].encode(stop, add_special_tokens=False)[0]
    want = reference("text2text-generation", ref, TEXTS[0], max_new_tokens=8, eos_token_id=stop_id)
    assert pipe(TEXTS[0], max_new_tokens=8, stop_sequence=stop) == want
    # arguments given to pipeline() are defaults for every call
    short = autolm.pipeline(
        "text2text-generation", model=pipe.model, tokenizer=pipe.tokenizer, max_new_tokens=3
    )
    assert short(TEXTS[1]) == reference("text2text-generation", ref, TEXTS[1], max_new_tokens=3)
    assert short(TEXTS[1], max_new_tokens=5) == reference(
        "text2text-generation", ref, TEXTS[1], max_new_tokens=5
    )


def test_model_config_is_left_alone(pipes):
    pipe = pipes("summarization")
    pipe(TEXTS[0])
    # transformers 4 popped the prefix out of the model's config; here a second pipeline still gets it
    assert pipe.model.config.task_specific_params["summarization"]["prefix"] == "summarize: "
    again = autolm.pipeline("summarization", model=pipe.model, tokenizer=pipe.tokenizer)
    assert again.prefix == "summarize: "


def test_bad_inputs_say_what_is_expected(pipes):
    pipe = pipes("text2text-generation")
    with pytest.raises(GenerationError, match="a string or a non-empty list of strings; got a list of int"):
        pipe([1, 2])
    with pytest.raises(GenerationError, match="got an empty list"):
        pipe([])
