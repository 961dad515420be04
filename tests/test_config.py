"""Configs: lossless round trips, overrides, the registry, and the errors for unknown types."""

from __future__ import annotations

import json

import pytest
from conftest import make_reference, save_reference

import autolm
from autolm.errors import ConfigError, UnsupportedModelError


def _write_config(directory, **values):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(values))
    return directory


def test_unknown_keys_survive_save_and_load(tmp_path):
    src = _write_config(
        tmp_path / "a",
        model_type="qwen2",
        hidden_size=64,
        num_attention_heads=4,
        my_custom_key={"nested": [1, 2, 3]},
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        torch_dtype="bfloat16",
    )
    config = autolm.AutoConfig.from_pretrained(src)
    assert type(config).__name__ == "Qwen2Config"
    assert config.my_custom_key == {"nested": [1, 2, 3]}
    assert config.num_key_value_heads == 4  # derived default
    config.save_pretrained(tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    original = json.loads((src / "config.json").read_text())
    for key, value in original.items():
        assert saved[key] == value, key
    again = autolm.AutoConfig.from_pretrained(tmp_path / "b")
    assert again == config
    assert json.loads(again.to_json_string()) == config.to_dict()


def test_kwargs_override_and_unused_are_returned(tmp_path):
    src = _write_config(tmp_path, model_type="llama", hidden_size=64, num_attention_heads=4)
    config, unused = autolm.AutoConfig.from_pretrained(
        src, hidden_size=128, rms_norm_eps=1e-3, not_a_setting=7, return_unused_kwargs=True
    )
    assert config.hidden_size == 128 and config.rms_norm_eps == 1e-3
    assert unused == {"not_a_setting": 7}
    assert not hasattr(config, "not_a_setting")


def test_transformers_config_roundtrip(tmp_path):
    """A config saved by transformers reloads equal after autolm saves it, and transformers reads ours."""
    import transformers

    save_reference(make_reference("qwen3", tie_word_embeddings=True), tmp_path / "ref")
    config = autolm.AutoConfig.from_pretrained(tmp_path / "ref")
    config.save_pretrained(tmp_path / "ours")
    theirs = transformers.AutoConfig.from_pretrained(tmp_path / "ours")
    original = transformers.AutoConfig.from_pretrained(tmp_path / "ref")
    for key in ("hidden_size", "head_dim", "num_key_value_heads", "tie_word_embeddings", "rope_parameters"):
        assert getattr(theirs, key) == getattr(original, key), key


def test_architectures_used_when_model_type_absent(tmp_path):
    src = _write_config(tmp_path, architectures=["Qwen3ForCausalLM"], hidden_size=32, num_attention_heads=2)
    assert type(autolm.AutoConfig.from_pretrained(src)).__name__ == "Qwen3Config"


def test_unknown_model_type_names_type_file_and_supported(tmp_path):
    src = _write_config(tmp_path, model_type="mamba_xl")
    with pytest.raises(UnsupportedModelError) as err:
        autolm.AutoConfig.from_pretrained(src)
    message = str(err.value)
    assert "mamba_xl" in message and str(src / "config.json") in message
    assert "llama" in message and "qwen2" in message and "qwen3" in message
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnsupportedModelError):
        autolm.AutoModelForCausalLM.from_pretrained(src)


def test_missing_and_broken_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        autolm.AutoConfig.from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ConfigError, match="not valid JSON"):
        autolm.AutoModelForCausalLM.from_pretrained(bad)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        autolm.AutoConfig.from_pretrained(tmp_path / "nowhere")


def test_generation_config_read_and_saved(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [2, 7], "temperature": 0.6, "do_sample": True, "custom": 1})
    )
    gc = autolm.GenerationConfig.from_pretrained(tmp_path)
    assert gc.eos_token_id == [2, 7] and gc.temperature == 0.6 and gc.custom == 1 and gc.top_k is None
    gc.save_pretrained(tmp_path / "out")
    assert autolm.GenerationConfig.from_pretrained(tmp_path / "out") == gc


def test_register_user_classes_never_replace_builtins():
    from autolm.models.llama import LlamaConfig, LlamaForCausalLM

    class TinyConfig(autolm.PretrainedConfig):
        model_type = "my-tiny"
        defaults = {"hidden_size": 8}

    class TinyModel(autolm.PreTrainedModel):
        config_class = TinyConfig

        def __init__(self, config):
            super().__init__(config)

    autolm.AutoConfig.register("my-tiny", TinyConfig, exist_ok=True)
    autolm.AutoModel.register(TinyConfig, TinyModel, exist_ok=True)
    assert type(autolm.AutoConfig.for_model("my-tiny")) is TinyConfig
    assert isinstance(autolm.AutoModel.from_config(TinyConfig()), TinyModel)
    with pytest.raises(ValueError, match="built into autolm"):
        autolm.AutoConfig.register("llama", TinyConfig)
    with pytest.raises(ValueError, match="built-in"):
        autolm.AutoModelForCausalLM.register(LlamaConfig, TinyModel)
    with pytest.raises(ValueError, match="already registered"):
        autolm.AutoConfig.register("my-tiny", TinyConfig)
    tiny_llama = LlamaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, vocab_size=10)
    assert type(autolm.AutoModelForCausalLM.from_config(tiny_llama)) is LlamaForCausalLM
