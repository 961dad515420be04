"""Write the TensorFlow checkpoints tests/test_from_tf.py loads: tests/data/tf/<name>/.

transformers 5 has no TensorFlow classes, so these are made once with the last TF-capable stack and kept
in the repo. Run (outside the project venv, which never needs TensorFlow):

    python3 -m venv /work/venv-tf
    /work/venv-tf/bin/pip install transformers==4.46.3 "tensorflow-cpu==2.17.*" "tf-keras==2.17.*" h5py numpy \
        torch==2.13.0
    TF_USE_LEGACY_KERAS=1 /work/venv-tf/bin/python scripts/make_tf_fixtures.py

Each folder gets config.json + tf_model.h5 from the TF model's `save_pretrained`, and expected.json: the
inputs (a padded batch with its attention mask; decoder ids for T5) and the TF model's logits on them.
Each single-file checkpoint is also read back by transformers 4.46's own PyTorch `from_tf=True` (it
reads no sharded TF checkpoint), which must give the same logits: the files are what it expects.
Every weight is shifted by seeded noise after the build, so biases and norm weights are not their 0/1
initial values and a mapping that swaps or drops them shows in the logits.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import transformers  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "tf"
VOCAB = 100

# Two sequences, the second padded on the right (pad id 0 is an ordinary token id in these vocabularies).
INPUT_IDS = [[5, 17, 42, 8, 93, 21, 3, 60], [11, 7, 64, 2, 0, 0, 0, 0]]
ATTENTION_MASK = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]]
TOKEN_TYPE_IDS = [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0, 0]]
DECODER_INPUT_IDS = [[0, 12, 55, 9, 31], [0, 40, 6, 77, 18]]

GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
BERT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    type_vocab_size=2,
)
T5 = dict(
    vocab_size=VOCAB,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)

# name -> (TF class, config class, config kwargs, inputs the logits are computed on)
FIXTURES = {
    "gpt2": ("TFGPT2LMHeadModel", "GPT2Config", GPT2, ("input_ids", "attention_mask")),
    "bert_seqcls": (
        "TFBertForSequenceClassification",
        "BertConfig",
        {**BERT, "num_labels": 3},
        ("input_ids", "attention_mask", "token_type_ids"),
    ),
    "bert_mlm": (
        "TFBertForMaskedLM",
        "BertConfig",
        BERT,
        ("input_ids", "attention_mask", "token_type_ids"),
    ),
    # T5 v1.0: ReLU feed-forward, lm_head tied to the shared embedding (scaled by d_model ** -0.5)
    "t5": (
        "TFT5ForConditionalGeneration",
        "T5Config",
        {**T5, "feed_forward_proj": "relu", "tie_word_embeddings": True},
        ("input_ids", "attention_mask", "decoder_input_ids"),
    ),
    # flan-t5 / T5 v1.1: gated-gelu feed-forward, an lm_head of its own
    "t5_gated": (
        "TFT5ForConditionalGeneration",
        "T5Config",
        # (initializer_factor: its own lm_head starts at std 1, logits of ~20 whose float32 noise nears 1e-5)
        {**T5, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "initializer_factor": 0.2},
        ("input_ids", "attention_mask", "decoder_input_ids"),
    ),
}
# Also saved in shards (tf_model-0000x-of-0000y.h5 + tf_model.h5.index.json), another h5 layout.
SHARDED = {"gpt2": "gpt2_sharded"}
INPUTS = {
    "input_ids": INPUT_IDS,
    "attention_mask": ATTENTION_MASK,
    "token_type_ids": TOKEN_TYPE_IDS,
    "decoder_input_ids": DECODER_INPUT_IDS,
}


def make(name: str, seed: int) -> None:
    class_name, config_name, kwargs, input_names = FIXTURES[name]
    tf.keras.utils.set_random_seed(seed)
    config = getattr(transformers, config_name)(**kwargs)
    model = getattr(transformers, class_name)(config)
    model(model.dummy_inputs)  # builds the variables
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(w.numpy() + rng.normal(0.0, 0.05, w.shape).astype(np.float32))

    inputs = {k: INPUTS[k] for k in input_names}
    out = model({k: tf.constant(v, dtype=tf.int32) for k, v in inputs.items()}, training=False)
    expected = {
        "tf_class": class_name,
        "transformers": transformers.__version__,
        "tensorflow": tf.__version__,
        "inputs": inputs,
        "logits": out.logits.numpy().astype(np.float32).tolist(),
    }
    for folder, shard_size in ((name, "10GB"), (SHARDED.get(name), "40KB")):
        if folder is None:
            continue
        folder = OUT / folder
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(folder, max_shard_size=shard_size)
        (folder / "generation_config.json").unlink(missing_ok=True)
        checked = {}
        if folder.name == name:
            checked["pytorch_from_tf_max_abs_diff"] = check_pytorch_from_tf(folder, class_name, expected)
        (folder / "expected.json").write_text(json.dumps(expected | checked) + "\n")
        print(f"{folder}: {sum(f.stat().st_size for f in folder.iterdir())} bytes", file=sys.stderr)


def check_pytorch_from_tf(folder: Path, tf_class: str, expected: dict) -> float:
    """transformers 4.46's PyTorch class loaded from the folder with from_tf=True: its logits' max
    difference to the TF model's (raises when over 1e-5 or when a TF weight went unused)."""
    import torch

    cls = getattr(transformers, tf_class.removeprefix("TF"))
    model, info = cls.from_pretrained(folder, from_tf=True, output_loading_info=True)
    if info["unexpected_keys"]:
        raise RuntimeError(f"{folder}: TF weights PyTorch did not use: {info['unexpected_keys']}")
    with torch.no_grad():
        out = model.eval()(**{k: torch.tensor(v) for k, v in expected["inputs"].items()}).logits
    diff = (out - torch.tensor(expected["logits"])).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"{folder}: PyTorch from_tf=True logits differ from TF's by {diff}")
    return diff


if __name__ == "__main__":
    for seed, name in enumerate(FIXTURES):
        make(name, seed)
