"""transformers code runs unchanged: each case is written once as a transformers user writes it and run
under both libraries on the same files (tiny models written by transformers)."""

from __future__ import annotations

import enum
import random
import subprocess
import sys
from typing import Literal

import pytest
import torch
from conftest import FAMILIES, make_reference, save_reference
from generation_helpers import CHAT_TEMPLATE, load_both, write_model, write_tokenizer

import autolm

IDS = torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """family -> (autolm model, autolm tokenizer, transformers model, transformers tokenizer, dir)."""
    cache = {}

    def get(family):
        if family not in cache:
            directory = write_model(tmp_path_factory.mktemp(family) / "m", family)
            cache[family] = (*load_both(directory), directory)
        return cache[family]

    return get


def libs():
    import transformers

    return (autolm, transformers)


def _close(a, b, tol=1e-5):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol


# --- return_dict=False ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_return_dict_false_unpacks_like_transformers(both, family):
    ours, _, ref, _, _ = both(family)
    with torch.no_grad():
        a, b = ours(IDS, labels=IDS, return_dict=False), ref(IDS, labels=IDS, return_dict=False)
    assert isinstance(a, tuple) and len(a) == len(b)
    loss, logits, past = a
    _close(loss, b[0])
    _close(logits, b[1])
    assert past.get_seq_length() == b[2].get_seq_length() == IDS.shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_base_model_return_dict_false(both, family):
    ours, _, ref, _, _ = both(family)
    with torch.no_grad():
        a = ours.model(IDS, return_dict=False, use_cache=False, output_hidden_states=True)
        b = ref.model(IDS, return_dict=False, use_cache=False, output_hidden_states=True)
    assert len(a) == len(b) == 2
    _close(a[0], b[0])
    assert len(a[1]) == len(b[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_classification_return_dict_false(tmp_path, family):
    ref = make_reference(family, task="sequence_classification", num_labels=3, pad_token_id=0)
    save_reference(ref, tmp_path)
    ours = autolm.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    labels = torch.tensor([0, 2])
    ids = IDS % 96
    with torch.no_grad():
        a = ours(ids, labels=labels, return_dict=False, use_cache=False)
        b = ref(ids, labels=labels, return_dict=False, use_cache=False)
    assert len(a) == len(b) == 2
    _close(a[0], b[0])
    _close(a[1], b[1])


# --- output_attentions ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_output_attentions_equal_eager_transformers(both, family):
    import transformers

    ours, _, _, _, directory = both(family)
    ref = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
    with torch.no_grad():
        a, b = ours(IDS, output_attentions=True), ref(IDS, output_attentions=True)
    assert len(a.attentions) == len(b.attentions) == ours.config.num_hidden_layers
    for x, y in zip(a.attentions, b.attentions):
        _close(x, y)
    _close(a.logits, b.logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_attentions_while_decoding_with_cache(both, family):
    import transformers

    ours, _, _, _, directory = both(family)
    ref = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
    outs = []
    for model in (ours, ref):
        with torch.no_grad():
            first = model(IDS[:, :-1])
            outs.append(model(IDS[:, -1:], past_key_values=first.past_key_values, output_attentions=True))
    assert outs[0].attentions[0].shape == (2, ours.config.num_attention_heads, 1, IDS.shape[1])
    for x, y in zip(outs[0].attentions, outs[1].attentions):
        _close(x, y)


# --- resize_token_embeddings ---------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_resize_token_embeddings(tmp_path, family, tied):
    directory = write_model(tmp_path / "m", family, tie_word_embeddings=tied)
    results = []
    for lib in libs():
        model = lib.AutoModelForCausalLM.from_pretrained(directory)
        old = model.get_input_embeddings().weight.detach().clone()
        torch.manual_seed(0)
        emb = model.resize_token_embeddings(model.config.vocab_size + 13)
        head = model.get_output_embeddings().weight
        assert (model.get_input_embeddings().weight.data_ptr() == head.data_ptr()) == tied
        assert torch.equal(emb.weight[: old.shape[0]], old)
        with torch.no_grad():
            logits = model(IDS).logits
        results.append((emb.weight.shape, model.config.vocab_size, head.shape, logits))
    (s1, v1, h1, l1), (s2, v2, h2, l2) = results
    assert s1 == s2 and v1 == v2 and h1 == h2
    _close(l1[..., :320], l2[..., :320])
    _close(l1, l2, tol=1e-3)  # new rows: a normal around the mean with 1e-9 of the covariance


@pytest.mark.parametrize("family", FAMILIES)
def test_resize_pad_to_multiple_and_shrink(tmp_path, family):
    directory = write_model(tmp_path / "m", family)
    shapes = []
    for lib in libs():
        model = lib.AutoModelForCausalLM.from_pretrained(directory)
        a = tuple(model.resize_token_embeddings(330, pad_to_multiple_of=64).weight.shape)
        b = tuple(model.resize_token_embeddings(300, mean_resizing=False).weight.shape)
        c = tuple(model.resize_token_embeddings(None, pad_to_multiple_of=7).weight.shape)
        shapes.append((a, b, c, model.config.vocab_size, tuple(model.lm_head.weight.shape)))
    assert shapes[0] == shapes[1]


# --- training ------------------------------------------------------------------------------------


def _train_step(model, ids, checkpointing: bool, kwargs=None):
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    assert model.is_gradient_checkpointing == checkpointing
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(ids, labels=ids)
    out.loss.backward()
    grads = {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }  # unrouted experts: none
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        after = model(ids, labels=ids).loss
    return out.loss.item(), grads, after.item()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "mode", ["plain", "checkpointing", "reentrant"], ids=["plain", "checkpointing", "reentrant"]
)
def test_training_step_equals_transformers(tmp_path, family, mode):
    import transformers

    directory = write_model(tmp_path / "m", family)
    kwargs = {"use_reentrant": True} if mode == "reentrant" else None
    ours = autolm.AutoModelForCausalLM.from_pretrained(directory)
    ref = transformers.AutoModelForCausalLM.from_pretrained(directory)
    (l1, g1, a1), (l2, g2, a2) = (_train_step(m, IDS, mode != "plain", kwargs) for m in (ours, ref))
    assert abs(l1 - l2) <= 1e-5 and abs(a1 - a2) <= 1e-5 and a1 < l1
    if "moe" in family:  # transformers 5 fuses the experts into one parameter; compare the rest
        g1 = {name: g for name, g in g1.items() if name in g2}
        assert len(g1) > len(g2) // 2
    else:
        assert sorted(g1) == sorted(g2)
    for name, g in g1.items():
        assert (g - g2[name]).abs().max().item() <= 1e-5 * max(1.0, g2[name].abs().max().item()), name


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_disable_and_input_grads(both, family):
    for model in both(family)[0], both(family)[2]:
        model.gradient_checkpointing_enable()
        model.gradient_checkpointing_disable()
        assert not model.is_gradient_checkpointing
        model.enable_input_require_grads()
        embeds = []
        hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o, seen=embeds: seen.append(o))
        with torch.enable_grad():
            model(IDS[:, :3])
        hook.remove()
        model.disable_input_require_grads()
        assert embeds[0].requires_grad
        model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_model_with_input_grads_trains_an_adapter(both, family):
    losses = []
    for model in both(family)[0], both(family)[2]:
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()
        model.train()
        loss = model(IDS, labels=IDS).loss
        loss.backward()  # reaches the inputs though no weight needs a gradient
        losses.append(loss.item())
        model.disable_input_require_grads()
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    assert abs(losses[0] - losses[1]) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_modes_and_config_dtype(both, family):
    ours, _, ref, _, _ = both(family)
    for model, lib in zip((ours, ref), libs()):
        assert not model.training
        assert model.config.dtype == torch.float32
        assert lib.AutoModelForCausalLM.from_config(model.config).training
    for dtype in (torch.bfloat16,):
        a = autolm.AutoModelForCausalLM.from_pretrained(both(family)[4], dtype=dtype)
        assert a.config.dtype == dtype == a.dtype


@pytest.mark.parametrize("family", FAMILIES)
def test_rope_parameters_override_on_classic_config(tmp_path, family):
    import transformers

    directory = write_model(tmp_path / "m", family)
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    if family == "gemma3_text":  # one rope per layer type (the tiny model's layers are all sliding)
        rope = {"sliding_attention": rope, "full_attention": {"rope_type": "default", "rope_theta": 1e6}}
    ours = autolm.AutoModelForCausalLM.from_pretrained(directory, rope_parameters=rope)
    ref = transformers.AutoModelForCausalLM.from_pretrained(directory, rope_parameters=dict(rope))
    plain = autolm.AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        a, b, c = ours(IDS).logits, ref(IDS).logits, plain(IDS).logits
    _close(a, b)
    assert (a - c).abs().max().item() > 1e-4  # the override was used


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_classification_losses_by_problem_type(tmp_path, family):
    results = []
    for problem, labels in (
        ("single_label_classification", torch.tensor([1, 2])),
        ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),
        ("regression", torch.tensor([[0.5, 1.0, -1.0], [0.0, 0.2, 0.1]])),
    ):
        ref = make_reference(family, task="sequence_classification", num_labels=3, pad_token_id=0)
        ref.config.problem_type = problem
        save_reference(ref, tmp_path / problem)
        ours = autolm.AutoModelForSequenceClassification.from_pretrained(tmp_path / problem)
        with torch.no_grad():
            results.append((ours(IDS % 96, labels=labels).loss, ref(IDS % 96, labels=labels).loss))
    for a, b in results:
        _close(a, b)


# --- top level -----------------------------------------------------------------------------------


def test_set_seed_seeds_random_numpy_torch():
    import numpy as np

    draws = []
    for lib in libs():
        lib.set_seed(123)
        draws.append((random.random(), float(np.random.rand()), torch.rand(3).tolist()))
    assert draws[0] == draws[1]


@pytest.mark.parametrize(
    "name", ["LlamaConfig", "LlamaForCausalLM", "LlamaModel", "Qwen2ForCausalLM", "Qwen2Config",
             "Qwen3ForCausalLM", "MistralForCausalLM", "MistralConfig", "Qwen3ForSequenceClassification"],
)  # fmt: skip
def test_family_classes_at_top_level(name):
    import transformers

    ours = getattr(autolm, name)
    assert ours.__name__ == getattr(transformers, name).__name__ == name
    assert name in dir(autolm)


def test_every_registered_class_is_importable():
    from autolm.models import MODELS

    for entry in MODELS.values():
        for name in (entry["config"], *entry["tasks"].values()):
            assert getattr(autolm, name).__name__ == name


def test_import_is_lazy():
    code = (
        "import sys, autolm; assert 'torch' not in sys.modules; from autolm import LlamaConfig; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("level", ["error", "warning", "info", "debug"])
def test_logging_verbosity_api(level):

    for lib in libs():
        getattr(lib.logging, f"set_verbosity_{level}")()
        assert lib.logging.get_verbosity() == getattr(lib.logging, level.upper())
        lib.logging.set_verbosity(lib.logging.WARNING)
        assert lib.logging.get_verbosity() == lib.logging.WARNING
    assert autolm.logging.get_logger().name == "autolm"
    assert autolm.logging.get_logger("autolm.x").name == "autolm.x"


def test_logging_handlers_and_progress_bars():

    for lib in libs():
        lib.logging.disable_default_handler()
        lib.logging.enable_default_handler()
        lib.logging.disable_progress_bar()
        assert not lib.logging.is_progress_bar_enabled()
        lib.logging.enable_progress_bar()
    from autolm.hub.progress import bars_disabled

    autolm.logging.disable_progress_bar()
    assert bars_disabled() is True
    autolm.logging.enable_progress_bar()


@pytest.mark.parametrize("var", ["TRANSFORMERS_VERBOSITY", "AUTOLM_VERBOSITY"])
def test_verbosity_from_environment(var):
    code = "import autolm, logging; print(logging.getLogger('autolm').getEffectiveLevel())"
    env = {"PATH": "", "PYTHONPATH": ":".join(sys.path), var: "error"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == 40


def test_no_advisory_warnings(monkeypatch, caplog):
    autolm.logging.warning_advice("advice one")
    monkeypatch.setenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    autolm.logging.warning_advice("advice two")
    text = caplog.text
    assert "advice one" in text and "advice two" not in text


# --- text-classification pipeline ----------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cls")
    ref = make_reference(
        "llama", task="sequence_classification", vocab_size=320, num_labels=3, pad_token_id=0,
        id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2},
    )  # fmt: skip
    with torch.no_grad():
        ref.score.weight.normal_(0, 2.0)
    save_reference(ref, directory)
    write_tokenizer(directory)
    return directory


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"top_k": None}, {"top_k": 2}, {"function_to_apply": "sigmoid"}, {"function_to_apply": "none"},
     {"top_k": 1}],
    ids=["default", "all", "top2", "sigmoid", "none", "top1"],
)  # fmt: skip
@pytest.mark.parametrize("task", ["text-classification", "sentiment-analysis"])
def test_text_classification_pipeline(classifier_dir, kwargs, task):
    outputs = []
    for lib in libs():
        pipe = lib.pipeline(task, model=str(classifier_dir))
        outputs.append((pipe("hello world", **kwargs), pipe(["the dog", "hello there"], **kwargs)))
    (a1, a2), (b1, b2) = outputs
    _assert_same_labels(a1, b1)
    _assert_same_labels(a2, b2)


def test_text_classification_single_label_uses_sigmoid(tmp_path):
    ref = make_reference("llama", task="sequence_classification", vocab_size=320, num_labels=1)
    save_reference(ref, tmp_path)
    write_tokenizer(tmp_path)
    out = [lib.pipeline("text-classification", model=str(tmp_path))("hello") for lib in libs()]
    _assert_same_labels(out[0], out[1])


def _assert_same_labels(a, b):
    """Same labels in the same order, scores within float32 summation noise (raw logits included)."""
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_labels(x, y)
        return
    assert a["label"] == b["label"]
    assert abs(a["score"] - b["score"]) <= 1e-5 * max(1.0, abs(b["score"]))


# --- chat templates: tools and assistant masks ---------------------------------------------------


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


def get_weather(city: str, unit: Unit = Unit.C, days: int | None = None) -> dict[str, float]:
    """Get the weather for a city.

    Args:
        city: The city, e.g. "Paris".
        unit: The unit of temperature.
        days (int): How many days
            to forecast.

    Returns:
        The forecast.
    """


def pick(kind: str, tags: list[str], pair: tuple[int, float], mode: Literal["a", "b"], extra: dict) -> None:
    """Pick something.

    Args:
        kind: The kind of thing (choices: ["tea", "coffee"])
        tags: Tags.
        pair: A pair.
        mode: A mode.
        extra: More.
    """


def no_doc(x: int):
    pass


def no_hint(x):
    """Does x.

    Args:
        x: a thing
    """


TOOL_TEMPLATE = (
    "{% if tools %}{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


@pytest.fixture(scope="module")
def tokenizers_dir(tmp_path_factory):
    import transformers

    directory = write_tokenizer(tmp_path_factory.mktemp("tok"))
    return autolm.AutoTokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(
        directory
    )


@pytest.mark.parametrize("tool", [get_weather, pick], ids=["weather", "pick"])
def test_tools_from_python_functions(tokenizers_dir, tool):
    from transformers.utils import get_json_schema

    from autolm.tokenization.tool_schema import get_json_schema as ours_schema

    assert ours_schema(tool) == get_json_schema(tool)
    messages = [{"role": "user", "content": "hi"}]
    texts = [
        tok.apply_chat_template(messages, tools=[tool], chat_template=TOOL_TEMPLATE, tokenize=False)
        for tok in tokenizers_dir
    ]
    assert texts[0] == texts[1]


@pytest.mark.parametrize("tool", [no_doc, no_hint], ids=["no_doc", "no_hint"])
def test_undescribable_tools_raise(tokenizers_dir, tool):
    errors = []
    for tok in tokenizers_dir:
        with pytest.raises(Exception) as info:
            tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=[tool], tokenize=False)
        errors.append(info.value)
    assert isinstance(errors[0], Exception) and isinstance(errors[1], Exception)


GENERATION_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
    {"role": "assistant", "content": "hello world, how are you?"},
    {"role": "user", "content": "fine"},
    {"role": "assistant", "content": "the dog sleeps."},
]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("tensors", [None, "pt"])
def test_assistant_tokens_mask(tokenizers_dir, batched, tensors):
    conversation = [CHAT, CHAT[:3]] if batched else CHAT
    outs = [
        tok.apply_chat_template(
            conversation,
            chat_template=GENERATION_TEMPLATE,
            return_assistant_tokens_mask=True,
            return_dict=True,
            padding=batched,
            return_tensors=tensors,
        )
        for tok in tokenizers_dir
    ]
    a, b = (o["assistant_masks"] for o in outs)
    a = a.tolist() if tensors else a
    b = b.tolist() if tensors else b
    assert a == b and sum(map(sum, a) if batched or tensors else a) > 0
    ids = [o["input_ids"].tolist() if tensors else o["input_ids"] for o in outs]
    assert ids[0] == ids[1]


def test_assistant_mask_with_plain_template_is_zero(tokenizers_dir):
    outs = [
        tok.apply_chat_template(
            CHAT, chat_template=CHAT_TEMPLATE, return_assistant_tokens_mask=True, return_dict=True
        )
        for tok in tokenizers_dir
    ]
    assert outs[0]["assistant_masks"] == outs[1]["assistant_masks"]
