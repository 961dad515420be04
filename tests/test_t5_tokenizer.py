"""T5's SentencePiece Unigram tokenizer: parity with transformers' T5Tokenizer(Fast) on ids, tokens, decoding,
sentinels and padding, loaded from spiece.model alone and from tokenizer.json.

The SentencePiece model is trained here on tests/data (T5's id layout: <pad> 0, </s> 1, <unk> 2, no bos);
transformers builds and saves the oracle folders.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

CORPUS = (Path(__file__).parent / "data/tokenizer_corpus.txt").read_bytes().decode("utf-8")
LINES = CORPUS.split("\n")
EXTRA = [
    "translate English to German: The house is wonderful.",
    "summarize: 我们今天去哪里吃饭？ The model weights are here.",
    "The <extra_id_0> walks in <extra_id_1> park.</s> <extra_id_99>",
    "<extra_id_0> cute dog <extra_id_1> the <extra_id_2>",
    "Hello , world ! Isn 't it ? Yes .  Tabs\tand\nnewlines  ",
    "Fullwidth ＡＢＣ１２３ and ligature ﬁ and ½ (NFKC folds them)",
]
TEXTS = [*LINES, *EXTRA, CORPUS]
SENTINELS = [f"<extra_id_{i}>" for i in range(100)]
SPECIALS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def train_spiece(vocab_size: int = 300, model_type: str = "unigram", **options) -> bytes:
    spm = pytest.importorskip("sentencepiece")
    words = "model token weight layer the a of and to in is house German English 模型 语言 数据 café naïve".split()
    generated = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + f" {i}." for i in range(200)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(LINES + generated),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=0.9995,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
        **options,
    )
    return buf.getvalue()


def v4_tokenizer_json(path: Path) -> None:
    """Rewrite a tokenizer.json the way transformers 4 wrote T5's (as on the hub): other pre-tokenizer and normalizer."""
    data = json.loads(path.read_text(encoding="utf-8"))
    precompiled = data["normalizer"]
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [precompiled, {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}],
    }
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    data["pre_tokenizer"] = metaspace
    data["decoder"] = metaspace
    write_json(path, data)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf", reason="transformers reads spiece.model through protobuf")
    root = tmp_path_factory.mktemp("t5tok")
    model = train_spiece()
    out = {}

    # (b) the older hub layout: spiece.model + tokenizer_config.json + special_tokens_map.json
    d = out["t5_spm"] = root / "t5_spm"
    d.mkdir()
    (d / "spiece.model").write_bytes(model)
    write_json(
        d / "tokenizer_config.json",
        {
            "tokenizer_class": "T5Tokenizer",
            "extra_ids": 100,
            "additional_special_tokens": SENTINELS,
            "model_max_length": 512,
            **SPECIALS,
        },
    )
    write_json(d / "special_tokens_map.json", {**SPECIALS, "additional_special_tokens": SENTINELS})

    # (a) tokenizer.json + tokenizer_config.json, written by transformers 5
    transformers.AutoTokenizer.from_pretrained(d).save_pretrained(root / "t5_json")
    out["t5_json"] = root / "t5_json"

    # the t5-small layout: a transformers 4 tokenizer.json, a config naming no class, config.json's model_type
    d = out["t5_v4_json"] = root / "t5_v4_json"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((root / "t5_json/tokenizer.json").read_bytes())
    v4_tokenizer_json(d / "tokenizer.json")
    write_json(d / "tokenizer_config.json", {"model_max_length": 512, "clean_up_tokenization_spaces": True})
    write_json(d / "config.json", {"model_type": "t5"})

    # mT5: no sentinels, and the config says so
    d = out["mt5_spm"] = root / "mt5_spm"
    d.mkdir()
    (d / "spiece.model").write_bytes(model)
    write_json(
        d / "tokenizer_config.json",
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "additional_special_tokens": None, **SPECIALS},
    )

    # only spiece.model: the sentinels follow the model's control pieces
    d = out["bare_spm"] = root / "bare_spm"
    d.mkdir()
    (d / "spiece.model").write_bytes(model)
    write_json(d / "tokenizer_config.json", {"tokenizer_class": "T5TokenizerFast", "extra_ids": 5})
    return out


KINDS = ["t5_spm", "t5_json", "t5_v4_json", "mt5_spm", "bare_spm"]


@pytest.fixture(scope="module")
def pairs(dirs):
    import transformers

    from autolm import AutoTokenizer

    cache = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = (
                AutoTokenizer.from_pretrained(dirs[kind]),
                transformers.AutoTokenizer.from_pretrained(dirs[kind]),
            )
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_ids_tokens_and_decoding_match_transformers(pairs, kind):
    ours, ref = pairs(kind)
    mismatches = []
    for text in TEXTS:
        for add_special in (True, False):
            got = ours(text, add_special_tokens=add_special)["input_ids"]
            want = ref(text, add_special_tokens=add_special)["input_ids"]
            if got != want:
                mismatches.append(("ids", add_special, text[:50], got[:12], want[:12]))
        if ours.tokenize(text) != ref.tokenize(text):
            mismatches.append(("tokens", text[:50]))
        want = ref(text)["input_ids"]
        for skip in (True, False):
            for cleanup in (None, True, False):
                a = ours.decode(want, skip_special_tokens=skip, clean_up_tokenization_spaces=cleanup)
                b = ref.decode(want, skip_special_tokens=skip, clean_up_tokenization_spaces=cleanup)
                if a != b:
                    mismatches.append(("decode", skip, cleanup, text[:50], a[:50], b[:50]))
    assert not mismatches, mismatches[:5]
    ids = ref.encode(CORPUS)
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
    assert ours.convert_tokens_to_ids(ref.convert_ids_to_tokens(ids)) == ids


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_and_sentinels_match(pairs, kind):
    ours, ref = pairs(kind)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        assert getattr(ours, name) == getattr(ref, name), name
        assert getattr(ours, name + "_id") == getattr(ref, name + "_id"), name
    assert (ours.pad_token_id, ours.eos_token_id, ours.unk_token_id) == (0, 1, 2)
    assert len(ours) == len(ref) and ours.vocab_size == ref.vocab_size
    assert ours.all_special_tokens == ref.all_special_tokens
    assert ours.all_special_ids == ref.all_special_ids
    assert ours.additional_special_tokens == ref.extra_special_tokens
    assert ours.model_max_length == ref.model_max_length
    assert ours.padding_side == ref.padding_side == "right"
    assert ours.clean_up_tokenization_spaces == ref.clean_up_tokenization_spaces
    count = {"mt5_spm": 0, "bare_spm": 5}.get(kind, 100)
    sentinels = SENTINELS[:count]
    # the sentinels sit at the top of the vocabulary in reverse order: <extra_id_0> is the last id
    assert ours.convert_tokens_to_ids(sentinels) == [len(ref) - 1 - i for i in range(count)]
    assert ours.convert_tokens_to_ids(sentinels) == ref.convert_tokens_to_ids(sentinels)
    assert ours.encode("") == ref.encode("") == [1]  # eos is appended even to nothing


@pytest.mark.parametrize("kind", ["t5_spm", "t5_json", "mt5_spm"])
def test_batch_padding_and_truncation_match(pairs, kind):
    ours, ref = pairs(kind)
    batch = [LINES[0], LINES[6], "short", EXTRA[2], "你好，世界 🙂", ""]
    for kwargs in (
        {"padding": True},
        {"padding": "longest", "truncation": True, "max_length": 7},
        {"padding": "max_length", "max_length": 40, "truncation": True},
        {"max_length": 5},
        {"padding": True, "pad_to_multiple_of": 8},
        {"padding": True, "padding_side": "left"},
    ):
        got, want = ours(batch, **kwargs), ref(batch, **kwargs)
        assert list(got.keys()) == list(want.keys()) == ["input_ids", "attention_mask"]
        for key in want:
            assert got[key] == want[key], (kwargs, key)
    got = ours(batch[:3], batch[2:5], padding=True, truncation="longest_first", max_length=12)
    want = ref(batch[:3], batch[2:5], padding=True, truncation="longest_first", max_length=12)
    assert got["input_ids"] == want["input_ids"] and got["attention_mask"] == want["attention_mask"]
    got = ours(batch[:2], batch[2:4], return_token_type_ids=True)
    assert got["token_type_ids"] == ref(batch[:2], batch[2:4], return_token_type_ids=True)["token_type_ids"]
    enc = ref(batch, padding=True)
    for skip in (True, False):
        assert ours.batch_decode(enc["input_ids"], skip_special_tokens=skip) == ref.batch_decode(
            enc["input_ids"], skip_special_tokens=skip
        )


def test_return_tensors(pairs):
    pytest.importorskip("torch")
    ours, ref = pairs("t5_json")
    got, want = (
        ours(EXTRA[:3], padding=True, return_tensors="pt"),
        ref(EXTRA[:3], padding=True, return_tensors="pt"),
    )
    assert got["input_ids"].tolist() == want["input_ids"].tolist()
    assert got["attention_mask"].tolist() == want["attention_mask"].tolist()
    assert ours.batch_decode(got["input_ids"], skip_special_tokens=True) == ref.batch_decode(
        want["input_ids"], skip_special_tokens=True
    )


@pytest.mark.parametrize("kind", ["t5_spm", "mt5_spm", "t5_v4_json"])
def test_save_pretrained_loads_back_in_both_libraries(pairs, kind, tmp_path):
    import transformers

    from autolm import AutoTokenizer

    ours, ref = pairs(kind)
    ours.save_pretrained(tmp_path)
    again, theirs = (
        AutoTokenizer.from_pretrained(tmp_path),
        transformers.AutoTokenizer.from_pretrained(tmp_path),
    )
    for text in [*EXTRA, CORPUS]:
        want = ref(text)["input_ids"]
        assert again(text)["input_ids"] == theirs(text)["input_ids"] == want
        assert again.decode(want, skip_special_tokens=True) == ref.decode(want, skip_special_tokens=True)
    assert again.all_special_tokens == theirs.all_special_tokens == ref.all_special_tokens
    assert len(again) == len(theirs) == len(ref)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "T5Tokenizer"


def test_spiece_model_is_read_without_sentencepiece(dirs, monkeypatch):
    import sys

    from autolm import AutoTokenizer

    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece now fails
    tok = AutoTokenizer.from_pretrained(dirs["t5_spm"])
    assert tok.decode(tok.encode(EXTRA[0]), skip_special_tokens=True) == EXTRA[0]


def test_spiece_reader_matches_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from autolm.tokenization.converters import read_sentencepiece_model

    long_piece = "▁" + "long" * 40  # a piece message over 128 bytes takes the reader's general path
    (tmp_path / "spiece.model").write_bytes(train_spiece(user_defined_symbols=["<sep>", long_piece]))
    ours = read_sentencepiece_model(tmp_path / "spiece.model")
    ref = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    assert [p for p, _, _ in ours.pieces] == [ref.id_to_piece(i) for i in range(ref.get_piece_size())]
    assert [s for _, s, _ in ours.pieces] == [ref.get_score(i) for i in range(ref.get_piece_size())]
    assert long_piece in [p for p, _, _ in ours.pieces]
    assert [i for i, (_, _, kind) in enumerate(ours.pieces) if kind == 3] == [0, 1]  # control: <pad>, </s>
    assert (ours.unk_id, ours.bos_id, ours.eos_id, ours.pad_id) == (2, -1, 1, 0)
    assert ours.precompiled_charsmap and ours.model_type == 1


def test_missing_spiece_model_says_what_to_copy(dirs, tmp_path):
    from autolm import AutoTokenizer
    from autolm.errors import TokenizerError

    (tmp_path / "tokenizer_config.json").write_bytes((dirs["t5_spm"] / "tokenizer_config.json").read_bytes())
    with pytest.raises(
        TokenizerError, match=r"neither tokenizer.json nor spiece.model.*Found: tokenizer_config"
    ):
        AutoTokenizer.from_pretrained(tmp_path)


def test_bpe_spiece_model_is_refused(tmp_path):
    from autolm import AutoTokenizer
    from autolm.errors import TokenizerError

    (tmp_path / "spiece.model").write_bytes(train_spiece(model_type="bpe"))
    write_json(tmp_path / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer"})
    with pytest.raises(TokenizerError, match="BPE model; T5Tokenizer needs a Unigram one"):
        AutoTokenizer.from_pretrained(tmp_path)


def test_mismatched_sentinel_count_is_refused_like_transformers(dirs, tmp_path):
    import transformers

    from autolm import AutoTokenizer
    from autolm.errors import TokenizerError

    (tmp_path / "tokenizer.json").write_bytes((dirs["t5_json"] / "tokenizer.json").read_bytes())
    write_json(tmp_path / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "extra_ids": 100})
    write_json(
        tmp_path / "special_tokens_map.json", {**SPECIALS, "additional_special_tokens": SENTINELS[:50]}
    )
    with pytest.raises(ValueError, match="additional_special_tokens must include the extra_ids"):
        transformers.AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="lists 50 <extra_id_N> tokens but tokenizer_config.json says"):
        AutoTokenizer.from_pretrained(tmp_path)
