"""Write tests/data/qwen1/tokenizer/ and tests/data/qwen1/chat/: what Qwen-7B-Chat's own tokenizer and chat
code compute, on a small vocabulary learned from the test corpus (tests/qwen1_vocab.py).

Run in the oracle venv (transformers==4.32.1 torch==2.13.0 tiktoken einops transformers-stream-generator):
    python scripts/make_qwen1_tokenizer_fixtures.py LEGACY_DIR LATER_DIR
LEGACY_DIR holds the repo's .py files of the revision with `<extra_N>` tokens (configuration_qwen.py,
modeling_qwen.py, qwen_generation_utils.py, tokenization_qwen.py), LATER_DIR the tokenization_qwen.py of a
later revision (`<|extra_N|>` tokens from id 151643, special tokens allowed in text by default). Nothing of
that code is written into this repo: only the vocabulary, configs, tiny weights and outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import qwen1_vocab  # noqa: E402

DATA = ROOT / "tests" / "data"
OUT = DATA / "qwen1"
IM_END_SCALE = 4.0  # two of the three greedy replies end with <|im_end|>
MERGES = 560  # 256 bytes + 560 merges + 208 special tokens = 1024, the chat model's vocabulary
EXTRA_LINES = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>",
    "text<|endoftext|>more <extra_3> <|extra_4|> <R>",
    "Ｆｕｌｌｗｉｄｔｈ ｆｏｒｍｓ and e\u0301 (NFC)",
    "",
    " ",
    "\n\n\n",
    "    def f(x):\n        return x  # 缩进\n",
]


def load(directory: str, module: str):
    sys.path.insert(0, str(Path(directory).resolve().parent))
    return __import__(f"{Path(directory).resolve().name}.{module}", fromlist=["_"])


def record_tokenizer(tok, lines: list[str]) -> dict:
    out: dict = {
        "len": len(tok),
        "eod_id": tok.eod_id,
        "im_start_id": tok.im_start_id,
        "im_end_id": tok.im_end_id,
        "special_tokens": list(tok.special_tokens.items()),
        "all_special_ids": tok.all_special_ids[:8],
        "lines": [],
    }
    for line in lines:
        item: dict = {"text": line}
        try:
            enc = tok(line)
            item["call"] = {k: list(v) for k, v in enc.items()}
            ids = enc["input_ids"]
            item["decode"] = tok.decode(ids)
            item["tokens"] = [t if isinstance(t, str) else t.hex() for t in tok.tokenize(line)]
        except ValueError as e:
            item["error"] = type(e).__name__
        allowed = tok(line, allowed_special="all")["input_ids"]
        item["allowed_all"] = allowed
        item["allowed_none"] = tok(line, allowed_special=set(), disallowed_special=())["input_ids"]
        item["decode_allowed"] = tok.decode(allowed)
        item["decode_allowed_skip"] = tok.decode(allowed, skip_special_tokens=True)
        try:
            item["disallowed_all"] = tok(line, disallowed_special="all")["input_ids"]
        except ValueError as e:
            item["disallowed_all"] = type(e).__name__
        out["lines"].append(item)
    # decoding a cut through a multi-byte character
    ids = tok("你好，世界")["input_ids"]
    out["partial"] = {
        "ids": ids,
        "replace": [tok.decode(ids[:k]) for k in range(len(ids) + 1)],
        "ignore": [tok.decode(ids[:k], errors="ignore") for k in range(len(ids) + 1)],
    }
    # a batch, padded on both sides once a pad token is set the way Qwen users set it
    batch = ["Hello, world!", "你好", "def f(x): return x"]
    out["batch"] = {k: [list(x) for x in v] for k, v in tok(batch).items()}
    tok.pad_token_id = tok.eod_id
    out["batch_right"] = {k: [list(x) for x in v] for k, v in tok(batch, padding=True).items()}
    tok.padding_side = "left"
    out["batch_left"] = {k: [list(x) for x in v] for k, v in tok(batch, padding=True).items()}
    out["truncated"] = tok(batch, truncation=True, max_length=4)["input_ids"]
    out["batch_decode"] = tok.batch_decode(out["batch_left"]["input_ids"], skip_special_tokens=True)
    return out


def main(legacy_dir: str, later_dir: str) -> None:
    corpus = (DATA / "tokenizer_corpus.txt").read_text(encoding="utf-8")
    lines = corpus.splitlines() + EXTRA_LINES
    ranks = qwen1_vocab.train_ranks(corpus, MERGES)
    folder = OUT / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    qwen1_vocab.write_ranks(ranks, folder / "qwen.tiktoken")
    tokenizer_config = {
        "remove_space": False,
        "do_lower_case": False,
        "tokenizer_class": "QWenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")

    legacy = load(legacy_dir, "tokenization_qwen").QWenTokenizer(str(folder / "qwen.tiktoken"))
    expected = {"legacy": record_tokenizer(legacy, lines)}
    padded = Path("/tmp/qwen1_padded.tiktoken")
    qwen1_vocab.write_ranks(qwen1_vocab.padded_ranks(ranks), padded)
    later = load(later_dir, "tokenization_qwen").QWenTokenizer(str(padded))
    expected["later"] = record_tokenizer(later, lines)
    (OUT / "expected_tokenizer.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1) + "\n")

    # chat: a tiny model of the legacy code with this tokenizer's 1024 ids, greedy generation config
    tok = load(legacy_dir, "tokenization_qwen").QWenTokenizer(str(folder / "qwen.tiktoken"))
    configuration = load(legacy_dir, "configuration_qwen")
    modeling = load(legacy_dir, "modeling_qwen")
    utils = load(legacy_dir, "qwen_generation_utils")
    base = json.loads((OUT / "plain" / "config.json").read_text())
    config_dict = {
        **base,
        "vocab_size": 1024,
        "padded_vocab_size": 1024,
        "n_positions": 512,
        "eos_token_id": tok.eod_id,
    }
    config_dict.update(use_dynamic_ntk=False, use_logn_attn=False)
    torch.manual_seed(7)
    model = modeling.QWenLMHeadModel(configuration.QWenConfig(**config_dict)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.dim() > 1 else 0.5)
        for block in model.transformer.h:
            block.ln_1.weight.add_(1.0)
            block.ln_2.weight.add_(1.0)
        # special tokens other than <|im_end|> get zero logits, so greedy replies are text (a real model
        # rarely writes them) and the next turn can encode them; <|im_end|> is scaled to end some replies
        for i in tok.special_tokens.values():
            if i != tok.im_end_id:
                model.lm_head.weight[i].zero_()
        model.lm_head.weight[tok.im_end_id].mul_(IM_END_SCALE)
    generation = {
        "chat_format": "chatml",
        "eos_token_id": tok.eod_id,
        "pad_token_id": tok.eod_id,
        "stop_words_ids": [[tok.eod_id]],
        "max_new_tokens": 12,
        "do_sample": False,
        "top_k": 0,
        "top_p": 0.8,
        "repetition_penalty": 1.1,
        "transformers_version": "4.31.0",
    }
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(**generation)
    chat = OUT / "chat"
    chat.mkdir(exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, chat / "model.safetensors", metadata={"format": "pt"})
    (chat / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    (chat / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (chat / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (chat / "qwen.tiktoken").write_bytes((folder / "qwen.tiktoken").read_bytes())
    turns = []
    history = None
    for query, system in (
        ("你好", None),
        ("Tell me about Beijing, please.", None),
        ("写一首诗", "You are a poet."),
    ):
        kwargs = {} if system is None else {"system": system}
        before = [list(t) for t in (history or [])]
        response, history = model.chat(tok, query, history=history, **kwargs)
        turns.append({"query": query, "system": system, "history_before": before, "response": response})
    expected_chat = {"turns": turns, "history": [list(t) for t in history]}
    long_history = [
        ("第一个问题：" + "很长的问题。" * 8, "回答一" * 10),
        ("second question", "answer two " * 6),
    ]
    contexts = []
    for window in (6144, 90, 40):
        raw, ids = utils.make_context(
            tok, "last question", history=long_history, system="You are a helpful assistant.",
            max_window_size=window, chat_format="chatml",
        )  # fmt: skip
        contexts.append({"max_window_size": window, "raw_text": raw, "context_tokens": ids})
    expected_chat["long_history"] = [list(t) for t in long_history]
    expected_chat["contexts"] = contexts
    (OUT / "expected_chat.json").write_text(json.dumps(expected_chat, ensure_ascii=False, indent=1) + "\n")
    print(json.dumps(turns, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
