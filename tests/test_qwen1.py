"""Qwen-1 (model_type "qwen") runs natively: logits and greedy ids equal to what the repo's own code
(Qwen-7B-Chat's modeling_qwen.py under transformers 4.32.1) computed on tiny random models, recorded by
scripts/make_qwen1_fixtures.py; the repo's .py files are never imported, whatever trust_remote_code says."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import autolm

DATA = Path(__file__).parent / "data" / "qwen1"
EXPECTED = json.loads((DATA / "expected_model.json").read_text())
LOGITS = load_file(DATA / "expected_logits.safetensors")
SENTINEL = "raise RuntimeError('QWEN1 SENTINEL: the repo code was imported')\n"


@pytest.fixture
def repo(tmp_path):
    """A fixture folder plus a repo .py file for every auto_map entry, each one raising on import."""

    def make(variant: str) -> Path:
        folder = tmp_path / variant
        shutil.copytree(DATA / variant, folder)
        for name in ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py"):
            (folder / name).write_text(SENTINEL)
        return folder

    return make


@pytest.mark.parametrize("variant", list(EXPECTED["variants"]))
@pytest.mark.parametrize("trust", [None, False, True])
def test_logits_and_greedy_ids_match_the_repo_code(repo, variant, trust, native_steps):
    kwargs = {} if trust is None else {"trust_remote_code": trust}
    imported = {m for m in sys.modules if "modeling_qwen" in m or "configuration_qwen" in m}
    model = autolm.AutoModelForCausalLM.from_pretrained(repo(variant), **kwargs)
    assert type(model).__name__ == "QWenLMHeadModel" and type(model).__module__ == "autolm.models.qwen"
    assert model.dtype == torch.float32  # the config's fp32 flag
    record = EXPECTED["variants"][variant]
    for name, prompt in EXPECTED["prompts"].items():
        ids = torch.tensor([prompt])
        with torch.no_grad():
            logits = model(ids).logits[0]
        assert (logits - LOGITS[f"{variant}/{name}"]).abs().max().item() <= 1e-4
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out[0, ids.shape[1] :].tolist() == record[f"greedy_{name}"]
    assert len(native_steps) == 2 * 11  # every decode step native, logn and dynamic NTK included
    # nothing of the repo's was imported by this load (earlier tests may have run repo code on purpose)
    assert {m for m in sys.modules if "modeling_qwen" in m or "configuration_qwen" in m} == imported


def test_prefer_remote_code_still_runs_the_repo_code(repo):
    with pytest.raises(RuntimeError, match="QWEN1 SENTINEL"):
        autolm.AutoModelForCausalLM.from_pretrained(
            repo("plain"), trust_remote_code=True, prefer_remote_code=True
        )
