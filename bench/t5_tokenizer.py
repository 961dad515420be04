"""T5 tokenizer benchmark: autolm vs transformers `AutoTokenizer.from_pretrained` and batch encoding.

Run: .venv/bin/python bench/t5_tokenizer.py [--pieces 32000] [--repeat 5]
Builds a T5-sized spiece.model (a Unigram model trained on tests/data, padded with random pieces to
`--pieces`), loads it from spiece.model alone and from the tokenizer.json transformers writes, and prints
best-of-N times with ratios (autolm / transformers) and the machine. Needs sentencepiece and transformers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def t5_spiece(pieces: int) -> bytes:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    lines = (ROOT / "tests/data/tokenizer_corpus.txt").read_bytes().decode("utf-8").split("\n")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=300,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    model = pb.ModelProto()
    model.ParseFromString(buf.getvalue())
    seen, rng = {p.piece for p in model.pieces}, random.Random(0)
    while len(model.pieces) < pieces:
        word = "▁" * (rng.random() < 0.5) + "".join(
            rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))
        )
        if word not in seen:
            seen.add(word)
            piece = model.pieces.add()
            piece.piece, piece.score, piece.type = word, -10 - 5 * rng.random(), 1
    return model.SerializeToString()


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pieces", type=int, default=32000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import transformers

    from autolm import AutoTokenizer

    tmp = Path(tempfile.mkdtemp())
    (tmp / "spm").mkdir()
    (tmp / "spm/spiece.model").write_bytes(t5_spiece(args.pieces))
    (tmp / "spm/tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    transformers.AutoTokenizer.from_pretrained(tmp / "spm").save_pretrained(tmp / "json")
    batch = (ROOT / "tests/data/tokenizer_corpus.txt").read_text(encoding="utf-8").split("\n") * 20

    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, python {platform.python_version()}"
    )
    print(f"{'case':<28}{'autolm ms':>12}{'transformers ms':>17}{'ratio':>8}")
    for name in ("spm", "json"):
        ours = best(lambda d=tmp / name: AutoTokenizer.from_pretrained(d), args.repeat)
        ref = best(lambda d=tmp / name: transformers.AutoTokenizer.from_pretrained(d), args.repeat)
        print(f"{'from_pretrained ' + name:<28}{ours * 1e3:>12.1f}{ref * 1e3:>17.1f}{ours / ref:>8.2f}")
    a, b = (
        AutoTokenizer.from_pretrained(tmp / "json"),
        transformers.AutoTokenizer.from_pretrained(tmp / "json"),
    )
    assert a(batch, padding=True)["input_ids"] == b(batch, padding=True)["input_ids"]
    ours = best(lambda: a(batch, padding=True, truncation=True), args.repeat)
    ref = best(lambda: b(batch, padding=True, truncation=True), args.repeat)
    print(f"{f'encode {len(batch)} lines':<28}{ours * 1e3:>12.1f}{ref * 1e3:>17.1f}{ours / ref:>8.2f}")


if __name__ == "__main__":
    main()
