"""Native CPU kernels for decoding (`cpu.c`), built with the system C compiler on first use.

torch runs the matrix-vector products of batch-1 decoding at about half the memory bandwidth two cores
have here (float32 `F.linear` on one thread, bfloat16 bound by conversion work); `cpu.c` streams each
weight row once over torch's own OpenMP threads. The library is compiled once per source version into
`$AUTOLM_HOME/kernels` (default `~/.cache/autolm/kernels`) and loaded with ctypes; everything falls back
to torch when it cannot be: no x86-64 AVX2/FMA/F16C CPU, no C compiler (`$CC`, else `cc`), or
`AUTOLM_NATIVE_KERNELS=0`. `scripts/setup.sh` builds it at install (`python -m autolm.kernels`); a
model load starts a background build when this version is missing (`build_in_background`); generation
only loads a finished build (`ensure_loaded(compile=False)`), so no reply ever waits for the compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger("autolm")

SOURCE = Path(__file__).with_name("cpu.c")
# -ffp-contract=off: no fused multiply-adds beyond the explicit ones, so elementwise ops round as torch's
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC"]
# Rows (batch size) up to which decoding takes the native step; beyond, torch's gemm reuses each weight
# tile across rows better.
MAX_ROWS = 8
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

_P, _I, _N = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {  # cpu.c's entry points; the first argument is the dtype code
    "autolm_linear": [_N, _P, _P, _P, _P, _I, _I, _I, _I, _N],
    "autolm_decode": [_N, _P, _P, _I, _P, _I, _P, _P, ctypes.POINTER(_I), _I, _I, _N],
    "autolm_norm": [_N, _P, _P, _I, _I, _P],
    "autolm_add_norm": [_N, _P, _P, _P, _P, _I, _I, _P, _N],
    "autolm_attend": [
        _N,
        _P,
        _P,
        _P,
        _P,
        _I,
        _I,
        _I,
        _I,
        _I,
        ctypes.POINTER(_I),
        ctypes.POINTER(_I),
        _P,
        _I,
        _I,
        ctypes.c_float,
        _N,
    ],
}

_lib: ctypes.CDLL | None = None
_tried = False
_lock = threading.Lock()


def kernels_dir() -> Path:
    """$AUTOLM_HOME/kernels, else ~/.cache/autolm/kernels (XDG_CACHE_HOME respected)."""
    home = os.environ.get("AUTOLM_HOME")
    if home:
        return Path(home).expanduser() / "kernels"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "autolm" / "kernels"


def unsupported_reason() -> str | None:
    """Why the kernels cannot run on this machine, or None when they can."""
    if os.environ.get("AUTOLM_NATIVE_KERNELS", "1").lower() in ("0", "false", "no", "off"):
        return "AUTOLM_NATIVE_KERNELS=0"
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"they need Linux on x86-64 (this is {sys.platform} on {platform.machine()})"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    missing = [flag for flag in ("avx2", "fma", "f16c") if flag not in flags]
    if missing:
        return f"the CPU lacks {', '.join(missing)}"
    return None


def _fallback_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"autolm-kernels-{os.getuid()}"


def _built_somewhere() -> bool:
    if built_path().exists():
        return True
    try:
        return built_path(_fallback_dir()).exists()
    except OSError:
        return False


def built_path(directory: Path | None = None) -> Path:
    """Where this version of cpu.c (source, compiler and flags) is built."""
    compiler = os.environ.get("CC") or "cc"
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    return (Path(directory) if directory is not None else kernels_dir()) / f"autolm_cpu-{digest}.so"


def build(directory: Path | None = None) -> Path:
    """Compile cpu.c into `directory` (default: kernels_dir()) unless that version is already there.

    Raises:
        RuntimeError: no C compiler, or it failed (its output is in the message).
    """
    compiler = os.environ.get("CC") or "cc"
    target = built_path(directory)
    directory = target.parent
    if target.exists():
        return target
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler: {compiler!r} is not on PATH (set CC to one)")
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("building autolm's native CPU kernels into %s (once per version)", target)
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # The compile and the rename run in their own session, so a build started in the background
    # finishes (and lands, atomically: a concurrent process sees no file or a whole one) even when this
    # process exits first; the next process then finds it.
    script = 'trap \'rm -f "$1"\' EXIT; "$0" $FLAGS "$SRC" -o "$1" -lm && mv -f "$1" "$2"'
    command = ["sh", "-c", script]
    env = {**os.environ, "FLAGS": " ".join(FLAGS), "SRC": str(SOURCE)}
    done = subprocess.run(
        [*command, compiler, str(partial), str(target)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        start_new_session=True,
    )
    if done.returncode != 0 or not target.exists():
        raise RuntimeError(f"{compiler} failed to build {SOURCE.name}:\n{done.stderr.strip()}")
    return target


def ensure_loaded(compile: bool = True) -> bool:
    """Build (once per source version) and load the kernels; True when they are in use.

    With compile=False, load them only if this version is already built (no compiler run: generation
    calls this before the prompt, and builds after the first token). A failure is logged once and
    torch's kernels are used instead.
    """
    global _lib, _tried
    if _lib is not None or _tried:
        return _lib is not None
    with _lock:
        if _tried:
            return _lib is not None
        reason = unsupported_reason()
        if reason is None and not compile and not _built_somewhere():
            return False
        _tried = True
        if reason is not None:
            logger.info("autolm native CPU kernels off: %s; decoding uses torch's kernels", reason)
            return False
        try:
            try:
                path = build()
            except OSError:  # the cache folder is not writable: build in the temp folder instead
                path = build(_fallback_dir())
            lib = ctypes.CDLL(str(path))  # torch is imported first, so its libgomp is the one used
            for name, argtypes in _SIGNATURES.items():
                getattr(lib, name).argtypes = argtypes
                getattr(lib, name).restype = ctypes.c_int
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            logger.warning("autolm native CPU kernels unavailable (%s); decoding uses torch's kernels", exc)
            return False
        _lib = lib
        return True


_background: threading.Thread | None = None


def build_in_background() -> None:
    """Compile the kernels in a daemon thread when this version is not built yet (model loads and
    generation call this; `scripts/setup.sh` builds them at install). The compiler runs in its own
    process, so the caller goes on; the next `ensure_loaded(compile=False)` after it finished loads
    the library."""
    global _background
    if _lib is not None or _tried or unsupported_reason() is not None or _built_somewhere():
        return
    with _lock:
        if _background is not None:
            return

        def run() -> None:
            try:
                try:
                    build()
                except OSError:
                    build(_fallback_dir())
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                logger.warning(
                    "autolm native CPU kernels could not be built (%s); decoding uses torch's", exc
                )

        _background = threading.Thread(target=run, name="autolm-kernel-build", daemon=True)
        _background.start()


def building() -> bool:
    """True while a background build runs."""
    return _background is not None and _background.is_alive()


def pending() -> bool:
    """True when a background build was started and its library is not loaded yet (it may be running,
    or done and waiting for `ensure_loaded(compile=False)`)."""
    return _background is not None and _lib is None and not _tried


def loaded() -> bool:
    return _lib is not None


def library() -> ctypes.CDLL | None:
    """The loaded library (None until ensure_loaded() succeeded)."""
    return _lib


def reset() -> None:
    """Forget the loaded library (tests; the next ensure_loaded() tries again)."""
    global _lib, _tried
    with _lock:
        _lib, _tried = None, False


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, computed the fastest way for CPU inference:

    - few rows of x (decoding, short prompts; see _native_rows): the native kernel, when loaded (tensors
      of one dtype among float32/bfloat16/float16, rows of weight contiguous);
    - more rows in bfloat16/float16 (a prompt): float32 products of the exactly widened tensors, rounded
      once, which is what torch's half-precision CPU gemm computes, 3-8x slower;
    - anything else, autograd or torch.compile tracing: `F.linear` itself.
    """
    if (
        x.device.type != "cpu"
        or weight.device.type != "cpu"
        or x.dtype != weight.dtype
        or x.dtype not in _DTYPES
        or weight.dim() != 2
        or x.shape[-1] != weight.shape[1]
        or (bias is not None and bias.dtype != x.dtype)
        or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        or torch.compiler.is_compiling()
    ):
        return F.linear(x, weight, bias)
    N, K = weight.shape
    M = x.numel() // K if K else 0
    if M > 4 and x.dtype != torch.float32 and _fast_half_gemm(x.dtype):
        return F.linear(x, weight, bias)  # the CPU multiplies this type natively: torch's gemm wins
    lib = _lib
    if (
        0 < M <= _native_rows(x.dtype, N * K)
        and lib is not None
        and weight.stride(1) == 1
        and (bias is None or bias.stride(0) == 1)
    ):
        x = x.contiguous()
        y = torch.empty(*x.shape[:-1], N, dtype=x.dtype)
        lib.autolm_linear(
            _DTYPES[x.dtype], x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(),
            y.data_ptr(), M, N, K, weight.stride(0), torch.get_num_threads(),
        )  # fmt: skip
        return y
    if M > MAX_ROWS and x.dtype != torch.float32:
        return _half_via_float(x, weight, bias)
    return F.linear(x, weight, bias)


_HALF_GEMM_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}
_half_gemm: dict[torch.dtype, bool] = {}


def _fast_half_gemm(dtype: torch.dtype) -> bool:
    """Whether this CPU has instructions for products in `dtype` (AVX512-BF16, AMX...), which torch's
    gemm (oneDNN) uses: there it beats the native kernel from 5 rows up (2-3x at 16-128 rows measured on
    a Zen 4 with AVX512-BF16) and widening to float32 entirely. Without them (AVX2 CPUs) torch's
    half-precision gemm is 3-8x slower than widening, and the native kernel and widening stay."""
    if dtype not in _half_gemm:
        flags: list[str] = []
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            pass
        _half_gemm[dtype] = any(flag in flags for flag in _HALF_GEMM_FLAGS.get(dtype, ()))
    return _half_gemm[dtype]


def _native_rows(dtype: torch.dtype, size: int) -> int:
    """Up to how many rows of x the native kernel beats the alternative (bench/matvec.py, prompts of
    16-38 tokens): always for half precision below 64 rows (torch's path widens the weights first);
    for float32, MKL's gemm catches up around 32 rows, except on large matrices, where the kernel's
    single pass over the weights still wins."""
    if dtype != torch.float32 or size >= 1 << 22:
        return 64
    return 24


# float32 copies of at most this many weight elements at a time (16 MB), so a prompt's products never
# hold a whole float32 copy of a large matrix
_WIDEN_CHUNK = 1 << 22


def _half_via_float(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    N, K = weight.shape
    xf = x.float()
    step = max(1, _WIDEN_CHUNK // max(K, 1))
    if step >= N:
        return F.linear(xf, weight.float(), None if bias is None else bias.float()).to(x.dtype)
    y = torch.empty(*x.shape[:-1], N, dtype=x.dtype)
    for start in range(0, N, step):
        end = min(N, start + step)
        part_bias = None if bias is None else bias[start:end].float()
        y[..., start:end] = F.linear(xf, weight[start:end].float(), part_bias)
    return y


# --- per-op kernels: what any family's torch code calls for its decoding steps -------------------


def _plain(*tensors: torch.Tensor | None) -> bool:
    """CPU tensors of one supported dtype, outside autograd and torch.compile tracing."""
    first = tensors[0]
    return (
        _lib is not None
        and first.dtype in _DTYPES
        and all(t is None or (t.device.type == "cpu" and t.dtype == first.dtype) for t in tensors)
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()
    )


def norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    kind: str = "rms",
    bias: torch.Tensor | None = None,
    offset: float = 0.0,
) -> torch.Tensor | None:
    """The norm of each row of x (kinds as in `decoder.Norm`: "rms", "rms_float", "layer") on the
    native kernel, for up to MAX_ROWS rows; None when it does not apply (the caller runs its torch code)."""
    from .decoder import NORM_KINDS, _Norm

    D = x.shape[-1]
    if not _plain(x, weight, bias) or x.numel() > MAX_ROWS * D or kind not in NORM_KINDS or kind is None:
        return None
    if weight.shape != (D,) or not weight.is_contiguous() or (bias is not None and not bias.is_contiguous()):
        return None
    x = x.contiguous()
    y = torch.empty_like(x)
    desc = _Norm(weight.data_ptr(), None if bias is None else bias.data_ptr(), _DTYPES[weight.dtype],
                 NORM_KINDS[kind], eps, offset)  # fmt: skip
    _lib.autolm_norm(_DTYPES[x.dtype], x.data_ptr(), y.data_ptr(), x.numel() // D, D, ctypes.byref(desc))
    return y


def attend_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor | None:
    """Attention of one query per row and head: q (B, H, 1, D), k/v (B, KVH, S, D) (a cache's slices),
    mask None or boolean broadcastable to (B, 1, 1, S). Returns (B, H, 1, D), or None when the native
    kernel does not apply (a float bias, a per-head mask, strides it cannot read)."""
    B, H, T, D = q.shape
    KVH, S = k.shape[1], k.shape[2]
    if T != 1 or not _plain(q, k, v) or H % KVH or k.stride(-1) != 1 or v.stride(-1) != 1:
        return None
    if mask is not None:
        if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
            return None
        mask = mask[:, 0, 0, :].expand(B, S)
        if mask.shape[-1] != S:
            return None
    q = q.contiguous()
    out = torch.empty_like(q)
    ks, vs = (_I * 3)(*k.stride()[:3]), (_I * 3)(*v.stride()[:3])
    _lib.autolm_attend(
        _DTYPES[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, H, KVH, D, S, ks, vs,
        None if mask is None else mask.data_ptr(), *(mask.stride() if mask is not None else (0, 0)),
        scaling, torch.get_num_threads(),
    )  # fmt: skip
    return out


def add_norm(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    kind: str = "layer",
    norm_bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """norm(x + bias + residual) row by row in one pass (a post-norm encoder's output: the product's bias
    and the residual added, then LayerNorm), any number of rows; None when it does not apply (the caller
    runs its torch code)."""
    from .decoder import NORM_KINDS, _Norm

    D = x.shape[-1]
    if not _plain(x, bias, residual, weight, norm_bias) or kind not in NORM_KINDS or kind is None:
        return None
    parts = (x, bias, residual, weight, norm_bias)
    if any(t is not None and not t.is_contiguous() for t in parts) or weight.shape != (D,):
        return None
    if (bias is not None and bias.shape != (D,)) or (residual is not None and residual.shape != x.shape):
        return None
    y = torch.empty_like(x)
    desc = _Norm(weight.data_ptr(), None if norm_bias is None else norm_bias.data_ptr(), _DTYPES[weight.dtype],
                 NORM_KINDS[kind], eps, 0.0)  # fmt: skip
    _lib.autolm_add_norm(
        _DTYPES[x.dtype], x.data_ptr(), None if bias is None else bias.data_ptr(),
        None if residual is None else residual.data_ptr(), y.data_ptr(), x.numel() // D, D, ctypes.byref(desc),
        torch.get_num_threads(),
    )  # fmt: skip
    return y


# activations oneDNN applies inside its product: name -> (post-op, algorithm)
_ONEDNN_ACTS = {
    None: ("none", ""),
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),
    "relu": ("relu", ""),
}
_onednn_ok: list[bool] = []


def _onednn_linear_ok() -> bool:
    """Whether large float32 products go to oneDNN's kernel (torch.ops.mkldnn._linear_pointwise, what
    torch.compile's CPU code calls): on AVX-512 CPUs it ran 180-185 GFLOP/s here (Zen 4) against MKL's
    140-165 for torch's F.linear, and applies the activation in the same pass."""
    if not _onednn_ok:
        flags: list[str] = []
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            pass
        _onednn_ok.append(
            "avx512f" in flags
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        )
    return _onednn_ok[0]


def encoder_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor | None:
    """act(x W^T + b) for an encoder's large float32 products (many rows, inference) through oneDNN in one
    pass, where that is faster than torch's F.linear (see _onednn_linear_ok); None when it does not apply
    (the caller runs its torch code)."""
    if (
        activation not in _ONEDNN_ACTS
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.device.type != "cpu"
        or (bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()))
        or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        or torch.compiler.is_compiling()
        or not _onednn_linear_ok()
    ):
        return None
    post, algorithm = _ONEDNN_ACTS[activation]
    flat = x.reshape(-1, x.shape[-1])
    try:
        out = torch.ops.mkldnn._linear_pointwise(flat, weight.contiguous(), bias, post, [], algorithm)
    except RuntimeError:  # an op this build cannot run: never again in this process
        _onednn_ok[0] = False
        return None
    return out.view(*x.shape[:-1], weight.shape[0])
