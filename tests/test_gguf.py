"""GGUF reading on files written here with gguf.GGUFWriter: every quant type against gguf's own
dequantizer, tiny llama/qwen2/qwen3 models written the way llama.cpp's converter writes them, and
bad input (truncated file, unknown architecture, unknown quant type, no tokenizer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, quants

from autolm.errors import GGUFError, ModelNotFoundError
from autolm.gguf import config_from_gguf, gguf_tokenizer_parts, iter_gguf_tensors, read_gguf

Q = GGMLQuantizationType
CORPUS_PATH = Path(__file__).parent / "data/tokenizer_corpus.txt"  # bytes as they are: CRLF, VT, FF, NBSP


def write_gguf(path: Path, arch: str, metadata: dict, tensors: dict[str, tuple[np.ndarray, Q]]) -> Path:
    """A GGUF file with `metadata` ({key: value}) and tensors ({name: (torch-order array, type)})."""
    writer = GGUFWriter(path, arch)
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, (array, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(name, array.astype(np.float32 if qtype == Q.F32 else np.float16))
        else:
            raw = array if array.dtype == np.uint8 else quants.quantize(array.astype(np.float32), qtype)
            writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- dequantization ------------------------------------------------------------------------------

QUANTIZABLE = [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]  # gguf.quants can write these
# K-quants: gguf has no quantizer, so blocks are random bytes with sane fp16 scales at these offsets
K_SCALE_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
ROWS = 6


def _random_blocks(qtype: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    elems, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // elems, size), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS[qtype]:
        scale = rng.normal(0, 0.02, size=(rows, cols // elems)).astype(np.float16)
        raw[:, :, offset : offset + 2] = scale[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


@pytest.fixture(scope="module")
def quant_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    tensors: dict[str, tuple[np.ndarray, Q]] = {
        "f32": (rng.normal(size=(ROWS, 64)).astype(np.float32), Q.F32)
    }
    for qtype in QUANTIZABLE:
        data = rng.normal(size=(ROWS, 96)).astype(np.float32)
        tensors[qtype.name] = (quants.quantize(data, qtype) if qtype != Q.F16 else data, qtype)
    for qtype in K_SCALE_OFFSETS:
        tensors[qtype.name] = (_random_blocks(qtype, ROWS, 512, rng), qtype)
    return write_gguf(tmp_path_factory.mktemp("quant") / "quants.gguf", "llama", {}, tensors)


@pytest.mark.parametrize("qtype", [Q.F32, *QUANTIZABLE, *K_SCALE_OFFSETS], ids=lambda q: q.name)
def test_dequantize_matches_gguf(quant_file, qtype):
    from autolm.gguf import dequantize

    tensor = read_gguf(quant_file).tensors["f32" if qtype == Q.F32 else qtype.name]
    assert tensor.tensor_type == qtype
    shape = tuple(reversed(tensor.shape.tolist()))
    expected = torch.from_numpy(quants.dequantize(np.asarray(tensor.data), qtype).astype(np.float32))
    got = dequantize(tensor.data, tensor.tensor_type, shape, torch.float32)
    assert got.shape == expected.shape == (ROWS, shape[1])
    assert torch.equal(got, expected)  # bit for bit
    assert torch.equal(dequantize(tensor.data, qtype, shape, torch.bfloat16), expected.to(torch.bfloat16))


def test_float_tensors_are_not_copied(quant_file):
    from autolm.gguf import dequantize

    tensor = read_gguf(quant_file).tensors["f32"]
    out = dequantize(tensor.data, tensor.tensor_type, tuple(reversed(tensor.shape.tolist())), torch.float32)
    assert out.data_ptr() == tensor.data.ctypes.data  # a view of the mapped file


def test_unsupported_quant_type_names_type_tensor_and_file(tmp_path):
    path = write_gguf(
        tmp_path / "tq.gguf", "llama", {}, {"blk.0.attn_q.weight": (np.zeros((2, 66), np.uint8), Q.TQ2_0)}
    )
    from autolm.gguf import dequantize

    tensor = read_gguf(path).tensors["blk.0.attn_q.weight"]
    with pytest.raises(GGUFError, match=r"TQ2_0") as info:
        dequantize(tensor.data, tensor.tensor_type, (2, 256), name=tensor.name, where=str(path))
    message = str(info.value)
    assert "blk.0.attn_q.weight" in message and str(path) in message and "Q4_K" in message


# --- bad files -----------------------------------------------------------------------------------


def _small_llama(path: Path, **extra_metadata) -> Path:
    metadata = {
        "llama.embedding_length": 32,
        "llama.feed_forward_length": 64,
        "llama.block_count": 1,
        "llama.attention.head_count": 4,
    } | extra_metadata
    weight = np.ones((32, 32), np.float32)
    return write_gguf(path, "llama", metadata, {"token_embd.weight": (weight, Q.F32)})


@pytest.mark.parametrize("keep", [0.5, 0.999], ids=["header", "data"])
def test_truncated_file(tmp_path, keep):
    path = _small_llama(tmp_path / "model.gguf")
    data = path.read_bytes()
    cut = int(len(data) * keep) if keep < 0.9 else len(data) - 16
    path.write_bytes(data[:cut])
    with pytest.raises(GGUFError, match="truncated") as info:
        read_gguf(path)
    assert str(path) in str(info.value)


def test_not_gguf_and_missing(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(GGUFError, match=str(path)):
        read_gguf(path)
    with pytest.raises(ModelNotFoundError, match="nothere"):
        read_gguf(tmp_path / "nothere.gguf")


def test_unsupported_architecture(tmp_path):
    path = write_gguf(
        tmp_path / "mamba.gguf",
        "mamba",
        {"mamba.embedding_length": 8},
        {"x.weight": (np.ones(8, np.float32), Q.F32)},
    )
    for call in (config_from_gguf, lambda p: next(iter_gguf_tensors(p))):
        with pytest.raises(GGUFError, match="'mamba'") as info:
            call(path)
        assert str(path) in str(info.value)
        assert all(
            a in str(info.value) for a in ("gemma3", "llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe")
        )


def test_unknown_tensor_is_named(tmp_path):
    path = write_gguf(
        tmp_path / "odd.gguf",
        "llama",
        {"llama.attention.head_count": 4},
        {"blk.0.mystery.weight": (np.ones(8, np.float32), Q.F32)},
    )
    with pytest.raises(GGUFError, match="blk.0.mystery.weight"):
        list(iter_gguf_tensors(path))


def test_no_tokenizer_metadata(tmp_path):
    path = _small_llama(tmp_path / "model.gguf")
    with pytest.raises(GGUFError, match="no tokenizer metadata") as info:
        gguf_tokenizer_parts(path)
    assert str(path) in str(info.value)


# --- tiny models written like llama.cpp's converter ----------------------------------------------

TINY = dict(
    vocab_size=160,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def tiny_model(family: str, tie: bool = False):
    import transformers

    extra = (
        {"head_dim": 32} if family == "qwen3" else {}
    )  # differs from hidden/heads: must come from the file
    extra["rope_theta"] = 50000.0
    config_class = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[family]
    model_class = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "qwen3": transformers.Qwen3ForCausalLM,
    }[family]
    config = config_class(**(TINY | extra | {"tie_word_embeddings": tie}))
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():  # norms start at ones; make them distinguishable
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's converter: per head, the two rotary halves become interleaved pairs."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_name(hf: str) -> str:
    stem, suffix = hf.rsplit(".", 1)
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{suffix}"
    _, _, layer, rest = stem.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[rest]}.{suffix}"


def write_like_llama_cpp(path: Path, family: str, model, qtype: Q) -> Path:
    config = model.config
    arch = family
    metadata = {
        "general.name": f"tiny-{family}",
        f"{arch}.context_length": config.max_position_embeddings,
        f"{arch}.embedding_length": config.hidden_size,
        f"{arch}.block_count": config.num_hidden_layers,
        f"{arch}.feed_forward_length": config.intermediate_size,
        f"{arch}.attention.head_count": config.num_attention_heads,
        f"{arch}.attention.head_count_kv": config.num_key_value_heads,
        f"{arch}.rope.freq_base": float(config.rope_parameters["rope_theta"]),
        f"{arch}.attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        f"{arch}.vocab_size": config.vocab_size,
        "general.file_type": 0 if qtype == Q.F32 else 7,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    if family == "llama":
        metadata[f"{arch}.rope.dimension_count"] = config.hidden_size // config.num_attention_heads
    if family == "qwen3":
        metadata[f"{arch}.attention.key_length"] = config.head_dim
        metadata[f"{arch}.attention.value_length"] = config.head_dim
    tensors = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        value = value.detach().float()
        if family == "llama" and ".q_proj." in name:
            value = llama_cpp_permute(value, config.num_attention_heads)
        if family == "llama" and ".k_proj." in name:
            value = llama_cpp_permute(value, config.num_key_value_heads)
        # llama.cpp keeps 1-D tensors (norms, biases) in F32
        tensors[gguf_name(name)] = (value.numpy(), qtype if value.ndim == 2 else Q.F32)
    return write_gguf(path, arch, metadata, tensors)


def expected_weights(family: str, model, qtype: Q) -> dict[str, torch.Tensor]:
    """What a loader must give back: the model's own weights, through `qtype` and back."""
    out = {}
    config = model.config
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        value = value.detach().float()
        if qtype != Q.F32 and value.ndim == 2:
            heads = {".q_proj.": config.num_attention_heads, ".k_proj.": config.num_key_value_heads}
            permuted = (
                next((h for key, h in heads.items() if key in name), None) if family == "llama" else None
            )
            stored = llama_cpp_permute(value, permuted) if permuted else value
            round_trip = torch.from_numpy(quants.dequantize(quants.quantize(stored.numpy(), qtype), qtype))
            if permuted:  # undo with the inverse reshape of the permutation
                n = round_trip.shape[0]
                round_trip = (
                    round_trip.reshape(permuted, n // permuted // 2, 2, -1).swapaxes(1, 2).reshape(n, -1)
                )
            value = round_trip
        out[name] = value
    return out


CASES = [(f, q) for f in ("llama", "qwen2", "qwen3") for q in (Q.F32, Q.Q8_0)]


@pytest.mark.parametrize("family,qtype", CASES, ids=[f"{f}-{q.name}" for f, q in CASES])
def test_tiny_model_round_trip(tmp_path, family, qtype):
    model = tiny_model(family)
    path = write_like_llama_cpp(tmp_path / f"{family}.gguf", family, model, qtype)
    got = dict(iter_gguf_tensors(path, torch.float32))
    expected = expected_weights(family, model, qtype)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], value), name

    config = config_from_gguf(path)
    hf = model.config
    assert config["model_type"] == family
    assert config["architectures"] == [type(model).__name__]
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ):
        assert config[key] == getattr(hf, key), key
    assert config["rms_norm_eps"] == pytest.approx(hf.rms_norm_eps)
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 50000.0
    assert config["rope_parameters"]["rope_type"] == "default"
    assert config["dtype"] == "float32"
    if family != "qwen2":
        assert config["head_dim"] == hf.head_dim


def test_tied_embeddings(tmp_path):
    model = tiny_model("qwen2", tie=True)
    path = write_like_llama_cpp(tmp_path / "tied.gguf", "qwen2", model, Q.F32)
    assert config_from_gguf(path)["tie_word_embeddings"] is True
    names = [name for name, _ in iter_gguf_tensors(path)]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_f16_file_dtype(tmp_path):
    model = tiny_model("qwen3")
    path = write_like_llama_cpp(tmp_path / "f16.gguf", "qwen3", model, Q.F16)
    assert config_from_gguf(path)["dtype"] == "float16"
    weights = dict(iter_gguf_tensors(path, torch.float16))
    q = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(weights["model.layers.0.self_attn.q_proj.weight"], q.half())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_same_as_transformers_gguf_loader(tmp_path, family):
    """transformers reads llama and qwen2 GGUF (not qwen3's head_dim): same weights and config."""
    import transformers

    model = tiny_model(family)
    path = write_like_llama_cpp(tmp_path / f"{family}.gguf", family, model, Q.Q8_0)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    )
    ours = dict(iter_gguf_tensors(path, torch.float32))
    state = theirs.state_dict()
    assert set(ours) == set(state)
    for name, value in ours.items():
        assert torch.equal(value, state[name]), name
    config = config_from_gguf(path)
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size", "rms_norm_eps"):
        assert config[key] == getattr(theirs.config, key), key


# --- a SentencePiece ("llama") vocabulary --------------------------------------------------------


def corpus_lines() -> tuple[list[str], str]:
    text = CORPUS_PATH.read_bytes().decode("utf-8")
    return text.split("\n"), text


@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory) -> Path:
    """A small SentencePiece-style vocabulary learned from the corpus, stored as llama.cpp does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines, _ = corpus_lines()
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace()
    learner.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=600, show_progress=False))
    learned = sorted(learner.get_vocab().items(), key=lambda item: item[1])
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    tokens += [t for t, _ in learned if t not in tokens]
    tokens.append("<|user|>")
    types = [2, 3, 3, *[6] * 256, *[1] * (len(tokens) - 260), 4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 260)] + [0.0]
    metadata = {
        "llama.attention.head_count": 4,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.chat_template": "{% for m in messages %}<|user|>{{ m['content'] }}</s>{% endfor %}",
    }
    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    return write_gguf(
        path, "llama", metadata, {"token_embd.weight": (np.ones((len(tokens), 32), np.float32), Q.F32)}
    )


def test_sentencepiece_tokenizer_matches_transformers(sentencepiece_gguf):
    import transformers

    path = sentencepiece_gguf
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    backend, kwargs = gguf_tokenizer_parts(path)
    assert kwargs["add_bos_token"] is True and kwargs["bos_token"] == "<s>" and kwargs["unk_token"] == "<unk>"
    assert kwargs["chat_template"] == theirs.chat_template
    lines, whole = corpus_lines()
    for text in [*lines, whole, "naïve café ☃ 𝄞 <|user|>hi</s>"]:
        ids = backend.encode(text).ids
        assert ids == theirs(text)["input_ids"], repr(text)
        assert backend.decode(ids, skip_special_tokens=False) == theirs.decode(ids), repr(text)
