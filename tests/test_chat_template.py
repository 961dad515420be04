"""Chat templates: same rendered prompts as transformers, a sandbox that holds, clear errors."""

from __future__ import annotations

import json

import pytest

from autolm.errors import ChatTemplateError, TemplateSecurityError
from autolm.tokenization.chat_template import render_chat_template

# Modelled on Qwen2.5: default system prompt, tools in <tools></tools>, tool calls and tool responses
QWEN_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Modelled on Llama 3.1: bos_token, header ids, a dated system block, trimmed contents, tools as JSON
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {{- "You have access to the following functions.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role in ['ipython', 'tool'] %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {{- message.content | tojson if message.content is mapping else message.content }}
        {{- "<|eot_id|>" }}
    {%- elif 'tool_calls' in message %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", "parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}<|eot_id|>" }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Modelled on Llama 2 / Mistral: a default system prompt folded into the first turn, strict alternation
LLAMA2_TEMPLATE = """{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = 'You are a helpful, respectful and honest assistant.' %}{% endif %}
{% for message in loop_messages %}
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{% endif %}
{% if loop.index0 == 0 %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}
{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}
{% endfor %}"""

# Uses loop controls, namespace and the `generation` tag that training templates carry
CONTROLS_TEMPLATE = """{% set ns = namespace(count=0) %}{% for message in messages %}{% if message.role == 'system' %}{% continue %}{% endif %}{% set ns.count = ns.count + 1 %}<|{{ message.role }}|>
{% if message.role == 'assistant' %}{% generation %}{{ message.content }}{% endgeneration %}{% else %}{{ message.content }}{% endif %}{{ eos_token }}
{% if ns.count >= 4 %}{% break %}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>
{% endif %}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather in a city, e.g. 北京 or Zürich",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
]

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello!"}],
    "system": [
        {"role": "system", "content": "You answer in French.  "},
        {"role": "user", "content": "What's 2+2?"},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "I'm an assistant. 🙂"},
        {"role": "user", "content": "用中文回答：今天天气怎么样？"},
        {"role": "assistant", "content": "今天天气很好。"},
        {"role": "user", "content": "Thanks <b>a lot</b> & bye"},
    ],
    "prefill": [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Autumn moonlight— "},
    ],
}

TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
        ],
    },
    {"role": "tool", "content": json.dumps({"temp": 21, "sky": "clear"})},
]

TEMPLATES = {
    "qwen": QWEN_TEMPLATE,
    "llama3": LLAMA3_TEMPLATE,
    "llama2": LLAMA2_TEMPLATE,
    "controls": CONTROLS_TEMPLATE,
}


@pytest.fixture(scope="module")
def tokenizers_pair(tmp_path_factory):
    """(autolm, transformers) tokenizers over one small byte-level BPE with chat special tokens."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from autolm import AutoTokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sample = [m["content"] for conv in CONVERSATIONS.values() for m in conv] * 5
    tok.train_from_iterator(sample + [QWEN_TEMPLATE, LLAMA3_TEMPLATE], trainer)
    d = tmp_path_factory.mktemp("chat")
    tok.save(str(d / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        # several named templates, as some repos ship them
        "chat_template": [
            {"name": "default", "template": QWEN_TEMPLATE},
            {"name": "llama3", "template": LLAMA3_TEMPLATE},
        ],
    }
    (d / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return AutoTokenizer.from_pretrained(d), transformers.AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("conversation", ["single", "system", "multi_turn"])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_rendering_matches_transformers(tokenizers_pair, template, conversation, add_generation_prompt):
    ours, ref = tokenizers_pair
    messages = CONVERSATIONS[conversation]
    kwargs = {"chat_template": TEMPLATES[template], "add_generation_prompt": add_generation_prompt}
    want = ref.apply_chat_template(messages, tokenize=False, **kwargs)
    assert ours.apply_chat_template(messages, tokenize=False, **kwargs) == want
    assert (
        ours.apply_chat_template(messages, **kwargs)["input_ids"]
        == ref.apply_chat_template(messages, **kwargs)["input_ids"]
    )


@pytest.mark.parametrize("template", ["qwen", "llama3", "controls"])
def test_continue_final_message_matches_transformers(tokenizers_pair, template):
    ours, ref = tokenizers_pair
    messages = CONVERSATIONS["prefill"]
    kwargs = {"chat_template": TEMPLATES[template], "continue_final_message": True, "tokenize": False}
    got = ours.apply_chat_template(messages, **kwargs)
    assert got == ref.apply_chat_template(messages, **kwargs)
    assert got.rstrip().endswith("Autumn moonlight—")


@pytest.mark.parametrize("template", ["qwen", "llama3"])
def test_tools_match_transformers(tokenizers_pair, template):
    ours, ref = tokenizers_pair
    kwargs = {
        "chat_template": TEMPLATES[template],
        "tools": TOOLS,
        "add_generation_prompt": True,
        "tokenize": False,
    }
    got = ours.apply_chat_template(TOOL_CONVERSATION, **kwargs)
    assert got == ref.apply_chat_template(TOOL_CONVERSATION, **kwargs)
    assert "Zürich" in got and "北京" in got  # tojson keeps non-ASCII as is


def test_named_templates_batch_and_tensors(tokenizers_pair):
    torch = pytest.importorskip("torch")
    ours, ref = tokenizers_pair
    batch = [CONVERSATIONS["single"], CONVERSATIONS["system"]]
    # default template, template chosen by name, and a batch of conversations
    assert ours.apply_chat_template(batch, tokenize=False) == ref.apply_chat_template(batch, tokenize=False)
    kwargs = {"chat_template": "llama3", "tokenize": False}
    assert ours.apply_chat_template(batch, **kwargs) == ref.apply_chat_template(batch, **kwargs)
    got = ours.apply_chat_template(batch, padding=True, return_tensors="pt", add_generation_prompt=True)
    want = ref.apply_chat_template(batch, padding=True, return_tensors="pt", add_generation_prompt=True)
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["attention_mask"], want["attention_mask"])
    ids = ours.apply_chat_template(CONVERSATIONS["single"], return_dict=False)
    assert ids == ref.apply_chat_template(CONVERSATIONS["single"], return_dict=False)
    assert isinstance(ids, list) and isinstance(ids[0], int)


def test_extra_template_variables_and_strftime():
    template = "{{ greeting }} {{ strftime_now('%Y') | length }} {{ {'b': 'é', 'a': [1, 2]} | tojson(sort_keys=True) }}"
    out = render_chat_template([{"role": "user", "content": "x"}], template, greeting="hi")
    assert out == 'hi 4 {"a": [1, 2], "b": "é"}'


def test_works_without_a_tokenizer():
    out = render_chat_template(
        CONVERSATIONS["multi_turn"], TEMPLATES["controls"], add_generation_prompt=True, eos_token="</s>"
    )
    assert out.startswith("<|user|>\nHi, who are you?</s>\n") and out.endswith("<|assistant|>\n")


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ raise_exception.__globals__ }}",
        "{% for m in messages %}{{ m.__class__ }}{% endfor %}",
        "{{ self._TemplateReference__context }}",
        "{% set ns = namespace(_secret=1) %}{{ ns }}",
        "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
    ],
)
def test_hostile_templates_raise_security_error(template):
    with pytest.raises(TemplateSecurityError):
        render_chat_template([{"role": "user", "content": "hi"}], template)


def test_raise_exception_message_surfaces(tokenizers_pair):
    ours, _ = tokenizers_pair
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        ours.apply_chat_template(messages, chat_template=LLAMA2_TEMPLATE, tokenize=False)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"content": "no role"}], r"Message 0 has no 'role'"),
        ([{"role": "user", "content": "ok"}, {"role": "assistant"}], r"Message 1 has no 'content'"),
        (["just a string"], r"Message 0 is a str"),
        ([[{"role": "user", "content": "ok"}], [{"role": "user"}]], r"Message 0 of conversation 1"),
    ],
)
def test_malformed_messages_are_named(messages, expected):
    with pytest.raises(ChatTemplateError, match=expected):
        render_chat_template(messages, CHATML_SIMPLE)


CHATML_SIMPLE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def test_missing_template_and_bad_flags(tokenizers_pair, tmp_path):
    from autolm import PreTrainedTokenizerFast

    ours, _ = tokenizers_pair
    plain = PreTrainedTokenizerFast(tokenizer_object=ours.backend_tokenizer)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        plain.apply_chat_template(CONVERSATIONS["single"])
    with pytest.raises(ChatTemplateError, match="not both"):
        ours.apply_chat_template(
            CONVERSATIONS["prefill"], continue_final_message=True, add_generation_prompt=True
        )
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat_template(CONVERSATIONS["single"], "{% for m in messages %}")
