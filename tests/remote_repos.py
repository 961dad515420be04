"""Model repos that ship their own code (auto_map), written as plain files for tests.

Every code file records that it ran by creating `<$X_SENTINEL_DIR>/<module>.<tag>.ran` when that
variable is set, so a test can prove a refused load executed nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

VOCAB = ["[UNK]", "hello", "world", "custom", "code", "runs"] + [f"t{i}" for i in range(26)]
HIDDEN = 16
CODE_FILES = ("configuration_x.py", "helpers.py", "modeling_x.py", "tokenization_x.py")

SENTINEL = """
import os as _os
if _os.environ.get("X_SENTINEL_DIR"):
    open(_os.path.join(_os.environ["X_SENTINEL_DIR"], __name__.rsplit(".", 1)[-1] + ".{tag}.ran"), "w").close()
"""

CONFIGURATION = """
from autolm import PretrainedConfig
{sentinel}

class XConfig(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=32, hidden_size=16, scale=1.0, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.scale = scale
        super().__init__(**kwargs)
"""

HELPERS = """
from torch import nn
{sentinel}
KIND = "{tag}"

def make_mlp(hidden):
    return nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.Tanh(), nn.Linear(2 * hidden, hidden))
"""

MODELING = """
import torch
from torch import nn

from autolm import PreTrainedModel
from autolm.modeling_utils import ModelOutput

from .configuration_x import XConfig
from .helpers import KIND, make_mlp
{extra_import}
{sentinel}

class XModel(PreTrainedModel):
    config_class = XConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mlp = make_mlp(config.hidden_size)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, **kwargs):
        h = self.embed(input_ids)
        return ModelOutput(last_hidden_state=h + self.mlp(h))


class XForCausalLM(PreTrainedModel):
    config_class = XConfig
    base_model_prefix = "model"
    kind = KIND

    def __init__(self, config):
        super().__init__(config)
        self.model = XModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, **kwargs):
        h = self.model(input_ids).last_hidden_state
        return ModelOutput(logits=self.lm_head(h) * self.config.scale)
"""

TOKENIZATION = """
from autolm import PreTrainedTokenizerFast
{sentinel}

class XTokenizerFast(PreTrainedTokenizerFast):
    kind = "{tag}"

    def shout(self, text):
        return text.upper()
"""

# The same model written against transformers' base classes (the common case on the Hub).
TF_CONFIGURATION = """
from transformers import PretrainedConfig


class TxConfig(PretrainedConfig):
    model_type = "tx_tiny"

    def __init__(self, vocab_size=32, hidden_size=16, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
"""

TF_MODELING = """
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_tx import TxConfig


class TxForCausalLM(PreTrainedModel):
    config_class = TxConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # computed in __init__, never saved: must survive a meta-device build
        self.register_buffer("freq", torch.linspace(0.5, 1.5, config.hidden_size), persistent=False)
        self.post_init()

    def _init_weights(self, module):
        # transformers 5 builds on meta and fills non-persistent buffers here
        if module is self:
            with torch.no_grad():
                self.freq.copy_(torch.linspace(0.5, 1.5, self.config.hidden_size))

    def forward(self, input_ids, **kwargs):
        h = self.embed(input_ids) * self.freq
        return CausalLMOutput(logits=self.lm_head(torch.tanh(self.proj(h))))
"""


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed.weight": (len(VOCAB), HIDDEN),
        "model.mlp.0.weight": (2 * HIDDEN, HIDDEN),
        "model.mlp.0.bias": (2 * HIDDEN,),
        "model.mlp.2.weight": (HIDDEN, 2 * HIDDEN),
        "model.mlp.2.bias": (HIDDEN,),
        "lm_head.weight": (len(VOCAB), HIDDEN),
    }
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def expected_logits(state: dict[str, torch.Tensor], ids: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    h = state["model.embed.weight"][ids]
    mid = torch.tanh(h @ state["model.mlp.0.weight"].T + state["model.mlp.0.bias"])
    h = h + mid @ state["model.mlp.2.weight"].T + state["model.mlp.2.bias"]
    return (h @ state["lm_head.weight"].T) * scale


def tokenizer_json() -> bytes:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str().encode()


def custom_files(
    tag: str = "a",
    model_type: str = "xtiny",
    code_repo: str | None = None,
    extra_import: str = "",
    seed: int = 0,
) -> dict[str, bytes]:
    """A complete repo: config + tokenizer with auto_map, code, weights. `code_repo`: the auto_map
    points at that repo (`org/repo--module.Class`) and the code files are left out."""
    prefix = f"{code_repo}--" if code_repo else ""
    config = {
        "model_type": model_type,
        "architectures": ["XForCausalLM"],
        "vocab_size": len(VOCAB),
        "hidden_size": HIDDEN,
        "tie_word_embeddings": False,
        "auto_map": {
            "AutoConfig": f"{prefix}configuration_x.XConfig",
            "AutoModel": f"{prefix}modeling_x.XModel",
            "AutoModelForCausalLM": f"{prefix}modeling_x.XForCausalLM",
        },
    }
    if model_type == "llama":  # read by autolm's own LlamaConfig too: its dimensions must fit together
        config["num_attention_heads"] = 2
    tokenizer_config = {
        "tokenizer_class": "XTokenizerFast",
        "unk_token": "[UNK]",
        "auto_map": {"AutoTokenizer": [None, f"{prefix}tokenization_x.XTokenizerFast"]},
    }
    files = {
        "config.json": json.dumps(config, indent=2).encode(),
        "generation_config.json": b'{"max_length": 12}',
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2).encode(),
        "tokenizer.json": tokenizer_json(),
        "model.safetensors": safetensors_bytes(weights(seed)),
    }
    if code_repo is None:
        files.update(code_files(tag, model_type, extra_import))
    return files


def code_files(tag: str = "a", model_type: str = "xtiny", extra_import: str = "") -> dict[str, bytes]:
    sentinel = SENTINEL.replace("{tag}", tag)
    fill = {"sentinel": sentinel, "tag": tag, "model_type": model_type, "extra_import": extra_import}
    return {
        "configuration_x.py": CONFIGURATION.format(**fill).encode(),
        "helpers.py": HELPERS.format(**fill).encode(),
        "modeling_x.py": MODELING.format(**fill).encode(),
        "tokenization_x.py": TOKENIZATION.format(**fill).encode(),
    }


def transformers_files() -> dict[str, bytes]:
    g = torch.Generator().manual_seed(3)
    state = {
        "embed.weight": torch.randn(len(VOCAB), HIDDEN, generator=g),
        "proj.weight": torch.randn(HIDDEN, HIDDEN, generator=g),
        "proj.bias": torch.randn(HIDDEN, generator=g),
        "lm_head.weight": torch.randn(len(VOCAB), HIDDEN, generator=g),
    }
    config = {
        "model_type": "tx_tiny",
        "architectures": ["TxForCausalLM"],
        "vocab_size": len(VOCAB),
        "hidden_size": HIDDEN,
        "tie_word_embeddings": False,
        "auto_map": {
            "AutoConfig": "configuration_tx.TxConfig",
            "AutoModelForCausalLM": "modeling_tx.TxForCausalLM",
        },
    }
    return {
        "config.json": json.dumps(config).encode(),
        "configuration_tx.py": TF_CONFIGURATION.encode(),
        "modeling_tx.py": TF_MODELING.encode(),
        "model.safetensors": safetensors_bytes(state),
    }


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return path.read_bytes()


def write(directory: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory
