"""Tiny models and a matching tokenizer for the generation, streamer, pipeline and chat tests.

The tokenizer is a byte-level BPE trained here on a few sentences (so Chinese and emoji split into
several tokens), with ChatML special tokens and template; its vocabulary fits the models' vocab_size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import make_reference, save_reference

VOCAB = 320
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog. the dog sleeps.",
    "hello world, hello there! how are you today? I am fine, thank you.",
    "once upon a time there was a small model that generated text one token at a time.",
    "你好，世界！今天天气很好。我们一起去公园吧。",
    "emoji 🙂 and 🚀 and ❤️ are made of several bytes.",
    "stop here. stop there. full stop.\n\nnew paragraph\n",
] * 4


def write_tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 8,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 128,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def write_model(directory: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """A tiny random transformers model saved with its tokenizer; eos/pad from the tokenizer."""
    kwargs = dict(vocab_size=VOCAB, max_position_embeddings=128, eos_token_id=2, pad_token_id=0)
    kwargs.update(overrides)
    ref = make_reference(family, seed=seed, **kwargs)
    # larger weights than the default init, so greedy text varies instead of repeating one token
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    save_reference(ref, directory)
    write_tokenizer(directory)
    return directory


def load_both(directory: Path, dtype=torch.float32):
    """(autolm model, autolm tokenizer, transformers model, transformers tokenizer) from one directory."""
    import transformers

    import autolm

    ours = autolm.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    ref = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    return (
        ours,
        autolm.AutoTokenizer.from_pretrained(directory),
        ref,
        transformers.AutoTokenizer.from_pretrained(directory),
    )
