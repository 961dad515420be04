"""autolm's native CPU kernels: the matrix-vector product and the fused Llama-family decode step.

Built with the machine's C compiler (the CI machine has one, as every machine of this project's kind);
each product is compared with torch's `F.linear`, each decode step with the model's own torch forward
and with transformers.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import make_reference, save_reference
from generation_helpers import load_both

import autolm
from autolm import kernels
from autolm.generation import loop
from autolm.kernels import decoder

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# one rounding of the result (half precision) or float32 summation-order noise
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


@pytest.fixture(scope="module", autouse=True)
def native(native_kernels):
    return native_kernels  # skipped, with the reason, where the kernels cannot be built


class Spy:
    """Counts calls into the native library."""

    def __init__(self, monkeypatch):
        self.calls: dict[str, int] = {}
        real = kernels._lib

        spy = self

        class Proxy:
            def __getattr__(self, name):
                fn = getattr(real, name)

                def call(*args):
                    spy.calls[name] = spy.calls.get(name, 0) + 1
                    return fn(*args)

                return call

        monkeypatch.setattr(kernels, "_lib", Proxy())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 3, kernels.MAX_ROWS, 23])
@pytest.mark.parametrize("n,k", [(5, 3), (193, 77), (70, 576)])
def test_linear_matches_torch(dtype, rows, n, k, monkeypatch):
    # the native kernel's own products, also on CPUs whose half-precision gemm goes to torch
    monkeypatch.setattr(kernels, "_half_gemm", {torch.bfloat16: False, torch.float16: False})
    spy = Spy(monkeypatch)
    g = torch.Generator().manual_seed(n * k + rows)
    x = torch.randn(rows, k, generator=g).to(dtype)
    wide = torch.randn(n, k + 7, generator=g).to(dtype)
    weight = wide[:, :k]  # rows contiguous, row stride k + 7
    bias = torch.randn(n, generator=g).to(dtype)
    for b in (None, bias):
        with torch.inference_mode():
            ours = kernels.linear(x, weight, b)
        exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
        assert ours.dtype == dtype and ours.shape == (rows, n)
        scale = exact.abs().max().item() + 1
        assert (ours.double() - exact).abs().max().item() <= TOLERANCE[dtype] * scale
    assert spy.calls["autolm_linear"] == 2


def test_linear_keeps_leading_dims_and_falls_back_where_torch_is_better(monkeypatch):
    monkeypatch.setattr(kernels, "_half_gemm", {torch.bfloat16: False, torch.float16: False})
    spy = Spy(monkeypatch)
    w = torch.randn(16, 8)
    x3 = torch.randn(1, 2, 8)
    with torch.inference_mode():
        assert kernels.linear(x3, w).shape == (1, 2, 16)
        many = torch.randn(kernels._native_rows(torch.float32, w.numel()) + 1, 8)
        assert torch.equal(kernels.linear(many, w), F.linear(many, w))  # gemm territory: torch
        assert torch.equal(kernels.linear(x3.double(), w.double()), F.linear(x3.double(), w.double()))
    assert spy.calls == {"autolm_linear": 1}
    # a half-precision prompt beyond the kernel's rows: float32 products, rounded once
    big = torch.randn(70, 8).bfloat16()
    with torch.inference_mode():
        widened = kernels.linear(big, w.bfloat16())
    assert torch.equal(widened, F.linear(big.float(), w.bfloat16().float()).bfloat16())
    monkeypatch.setattr(kernels, "_WIDEN_CHUNK", 3 * 8)  # 3 weight rows widened at a time
    bias = torch.randn(16).bfloat16()
    with torch.inference_mode():
        chunked = kernels.linear(big, w.bfloat16(), bias)
    expected = F.linear(big.float(), w.bfloat16().float(), bias.float()).bfloat16()
    torch.testing.assert_close(chunked, expected, rtol=8e-3, atol=8e-3)
    # autograd needs torch's op: with a weight that requires grad the product stays differentiable
    p = torch.nn.Parameter(w.clone())
    out = kernels.linear(torch.randn(1, 8), p)
    out.sum().backward()
    assert p.grad is not None and spy.calls == {"autolm_linear": 1}


def test_half_precision_rows_go_to_torch_on_cpus_that_multiply_them(monkeypatch):
    """With AVX512-BF16/AMX (read from /proc/cpuinfo), torch's bfloat16 gemm beats the native kernel from
    5 rows up: those products are F.linear's own; 1-4 rows (decoding) stay native."""
    monkeypatch.setattr(kernels, "_half_gemm", {torch.bfloat16: True, torch.float16: False})
    spy = Spy(monkeypatch)
    w, b = torch.randn(16, 8).bfloat16(), torch.randn(16).bfloat16()
    with torch.inference_mode():
        for rows in (5, 38, 70):
            x = torch.randn(rows, 8).bfloat16()
            assert torch.equal(kernels.linear(x, w, b), F.linear(x, w, b))
        assert spy.calls == {}
        kernels.linear(torch.randn(4, 8).bfloat16(), w, b)
        kernels.linear(torch.randn(5, 8).half(), w.half(), b.half())  # no such instructions for float16
    assert spy.calls == {"autolm_linear": 2}
    flags = open("/proc/cpuinfo").read()
    monkeypatch.setattr(kernels, "_half_gemm", {})
    assert kernels._fast_half_gemm(torch.bfloat16) == ("avx512_bf16" in flags or "amx_bf16" in flags)


def _generate(model, ids, mask, native: bool, monkeypatch, **kwargs):
    if not native:
        monkeypatch.setattr(loop, "native_decoder", lambda model: None)
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    monkeypatch.undo()
    return out


CASES = {
    "llama-gqa": ("llama", {}),
    "llama-mha-biases": ("llama", {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True}),
    "llama-mqa": ("llama", {"num_key_value_heads": 1}),
    "qwen2-bias": ("qwen2", {}),
    "qwen3-qk-norm": ("qwen3", {}),
    "mistral-window": ("mistral", {"sliding_window": 6}),
}


def _model_dir(tmp_path, case: str):
    family, overrides = CASES[case]
    if family == "mistral":
        import transformers
        from conftest import TINY

        torch.manual_seed(0)
        ref = transformers.MistralForCausalLM(transformers.MistralConfig(**TINY, **overrides)).eval()
    else:
        ref = make_reference(family, **overrides)
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return save_reference(ref, tmp_path / case)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", sorted(CASES))
def test_native_decode_step_matches_torch_forward(tmp_path, case, dtype, cache, monkeypatch):
    model = autolm.AutoModelForCausalLM.from_pretrained(_model_dir(tmp_path, case), dtype=dtype)
    ids = torch.randint(1, 96, (3, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    kwargs = {"cache_implementation": "static"} if cache == "static" else {}
    spy = Spy(monkeypatch)
    fast = _generate(model, ids, mask, True, monkeypatch, **kwargs)
    assert spy.calls.get("autolm_decode") == 11  # every step after the first token
    slow = _generate(model, ids, mask, False, monkeypatch, **kwargs)
    assert torch.equal(fast.sequences, slow.sequences)
    for a, b in zip(fast.scores, slow.scores):
        finite = torch.isfinite(b)
        scale = b[finite].abs().max().item()
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert (a[finite] - b[finite]).abs().max().item() <= tol * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_native_decode_matches_transformers(tmp_path, dtype):
    ref = make_reference("llama", vocab_size=320, max_position_embeddings=128)
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    directory = save_reference(ref, tmp_path / "m")
    from generation_helpers import write_tokenizer

    write_tokenizer(directory)
    ours, _, theirs, _ = load_both(directory, dtype)
    ids = torch.randint(1, 320, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    args = dict(
        attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0,
        output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    a, b = ours.generate(ids, **args), theirs.generate(ids, **args)
    if dtype == torch.float32:
        assert torch.equal(a.sequences, b.sequences)
        steps = len(b.scores)
    else:
        # bfloat16 logits of a tiny model tie often, so the two may part at a near-tie: compare the
        # scores up to the first step where a token differs
        new = a.sequences[:, 7:] != b.sequences[:, 7:]
        steps = int(new.any(0).nonzero()[0]) + 1 if new.any() else len(b.scores)
        assert steps >= 8
    for x, y in zip(a.scores[:steps], b.scores[:steps]):
        scale = y.abs().max().item()
        assert (x - y).abs().max().item() <= (1e-5 if dtype == torch.float32 else 3e-2) * scale


def test_native_decoder_declines_what_it_does_not_implement(tmp_path):
    from autolm.models.layers import RMSNorm
    from autolm.models.llama import LlamaDecoderLayer

    directory = _model_dir(tmp_path, "llama-gqa")
    model = autolm.AutoModelForCausalLM.from_pretrained(directory)
    assert decoder.native_decoder(model) is not None  # straight after loading: nothing to fuse first

    handle = model.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert decoder.native_decoder(model) is None  # a hook must run
    handle.remove()

    class MyLayer(LlamaDecoderLayer):
        def forward(self, x, *args):
            return super().forward(x, *args) * 1.0

    model.model.layers[1].__class__ = MyLayer
    assert decoder.native_decoder(model) is None  # a user's own layer code must run
    model.model.layers[1].__class__ = LlamaDecoderLayer

    class MyNorm(RMSNorm):
        def forward(self, x):
            return super().forward(x) * 2.0

    model.model.norm.__class__ = MyNorm
    assert decoder.native_decoder(model) is None  # nor may a norm of its own be skipped
    model.model.norm.__class__ = RMSNorm
    assert decoder.native_decoder(model) is not None


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_build_failure_and_opt_out_fall_back_to_torch(tmp_path):
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from autolm import kernels; print('loaded', kernels.ensure_loaded())"
    )
    broken = _python(code, AUTOLM_HOME=str(tmp_path / "home"), CC="false")
    assert "loaded False" in broken.stdout, broken.stderr
    assert "unavailable" in broken.stderr and "false failed" in broken.stderr
    missing = _python(code, AUTOLM_HOME=str(tmp_path / "home"), CC="no-such-compiler")
    assert "loaded False" in missing.stdout and "no C compiler" in missing.stderr
    off = _python(code, AUTOLM_NATIVE_KERNELS="0")
    assert "loaded False" in off.stdout and "AUTOLM_NATIVE_KERNELS=0" in off.stderr
    assert not list((tmp_path / "home").rglob("*.so"))  # nothing half-built left behind


def test_build_is_cached_per_source_version(tmp_path):
    first = kernels.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert kernels.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_unwritable_cache_folder_builds_in_the_temp_folder(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    (tmp_path / "tmp").mkdir()
    code = "from autolm import kernels; print('loaded', kernels.ensure_loaded())"
    done = _python(code, AUTOLM_HOME=str(blocker), TMPDIR=str(tmp_path / "tmp"))
    assert "loaded True" in done.stdout, done.stderr
    assert list((tmp_path / "tmp").rglob("autolm_cpu-*.so"))


def test_static_cache_keeps_the_sliding_window(tmp_path):
    import transformers

    directory = _model_dir(tmp_path, "mistral-window")
    ours = autolm.AutoModelForCausalLM.from_pretrained(directory)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = torch.randint(1, 96, (1, 9), generator=torch.Generator().manual_seed(3))
    args = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = theirs.generate(ids, **args)
    assert torch.equal(ours.generate(ids, **args), expected)
    assert torch.equal(ours.generate(ids, cache_implementation="static", **args), expected)


def test_a_reply_never_waits_for_the_compiler(tmp_path):
    """A load starts the build in the background; generation goes on with torch's kernels while the
    compiler runs (here: a compiler held until the first reply is done), and takes the native step
    once the build is there."""
    directory = _model_dir(tmp_path, "llama-gqa")
    started, go = tmp_path / "started", tmp_path / "go"
    compiler = tmp_path / "slow-cc"
    compiler.write_text(
        f'#!/bin/sh\ntouch {started}\nwhile [ ! -e {go} ]; do sleep 0.05; done\nexec cc "$@"\n'
    )
    compiler.chmod(0o755)
    code = f"""
import torch, autolm
from autolm import kernels
model = autolm.AutoModelForCausalLM.from_pretrained({str(directory)!r})
ids = torch.tensor([[5, 6, 7]])
model.generate(ids, max_new_tokens=6, do_sample=False)
print("first reply done; building", kernels.building(), "loaded", kernels.loaded())
open({str(go)!r}, "w").close()
kernels._background.join(120)
model.generate(ids, max_new_tokens=6, do_sample=False)
print("second reply; loaded", kernels.loaded())
"""
    done = _python(code, AUTOLM_HOME=str(tmp_path / "home"), CC=str(compiler))
    assert done.returncode == 0, done.stderr
    assert started.exists()
    assert "first reply done; building True loaded False" in done.stdout, done.stdout + done.stderr
    assert "second reply; loaded True" in done.stdout


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["rms", "rms_float", "layer"])
def test_norm_kernel_matches_torch(dtype, kind):
    x = torch.randn(3, 1, 77, generator=torch.Generator().manual_seed(0)).to(dtype)
    w = torch.randn(77, generator=torch.Generator().manual_seed(1)).to(dtype)
    b = torch.randn(77, generator=torch.Generator().manual_seed(2)).to(dtype) if kind == "layer" else None
    got = kernels.norm(x, w, 1e-5, kind, bias=b, offset=1.0 if kind == "rms_float" else 0.0)
    xf = x.float()
    if kind == "layer":
        expected = F.layer_norm(xf, (77,), w.float(), b.float(), 1e-5).to(dtype)
    else:
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)
        if kind == "rms":  # Llama: round, then the weight in the model dtype
            expected = w * normed.to(dtype)
        else:  # Gemma: (1 + w) in float32, rounded once
            expected = (normed * (1.0 + w.float())).to(dtype)
    assert got is not None and got.dtype == dtype
    assert (got.float() - expected.float()).abs().max().item() <= TOLERANCE[dtype] * 8


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (3, 1)])
def test_one_query_attention_kernel_matches_sdpa(dtype, heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, 1, 16, generator=g).to(dtype)
    cache = torch.randn(2, kv_heads, 40, 16, generator=g).to(dtype)  # a cache buffer, 29 slots in use
    k, v = cache[:, :, :29], (cache * 0.5)[:, :, :29]
    mask = torch.ones(2, 1, 1, 29, dtype=torch.bool)
    mask[0, ..., :5] = False  # left padding of row 0
    got = kernels.attend_one(q, k, v, mask, 0.25)
    expected = F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask, scale=0.25, enable_gqa=heads != kv_heads
    ).to(dtype)
    assert got is not None and got.shape == q.shape
    assert (got.float() - expected.float()).abs().max().item() <= TOLERANCE[dtype] * 4


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("parts", ["bias+residual", "residual", "none"])
def test_add_norm_kernel_matches_torch(dtype, parts):
    """One pass for a post-norm encoder's output: LayerNorm(x + bias + residual), any number of rows."""
    g = torch.Generator().manual_seed(0)
    x, residual = (torch.randn(70, 77, generator=g).to(dtype) for _ in range(2))
    bias, w, b = (torch.randn(77, generator=g).to(dtype) for _ in range(3))
    bias = bias if parts == "bias+residual" else None
    residual = residual if parts != "none" else None
    got = kernels.add_norm(x, bias, residual, w, 1e-12, "layer", b)
    total = x if bias is None else x + bias
    total = total if residual is None else total + residual
    expected = F.layer_norm(total.float(), (77,), w.float(), b.float(), 1e-12).to(dtype)
    assert got is not None and got.dtype == dtype and got.shape == x.shape
    assert (got.float() - expected.float()).abs().max().item() <= TOLERANCE[dtype] * 8
    with torch.enable_grad():
        assert kernels.add_norm(x.requires_grad_(dtype.is_floating_point), bias, residual, w, 1e-12) is None
