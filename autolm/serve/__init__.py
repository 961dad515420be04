"""`autolm serve`: an OpenAI-compatible HTTP server with continuous batching and a chat page.

`load_for_serving(name)` loads a causal LM (or an encoder, for embeddings); `create_app` builds the
FastAPI app; `run_server` runs it under uvicorn with a clean shutdown on SIGTERM. Needs the `serve`
extra: `pip install 'autolm[serve]'`.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from ..errors import AutolmError

logger = logging.getLogger("autolm.serve")

__all__ = ["create_app", "load_for_serving", "run_server", "served_name"]


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise AutolmError(
            f"`autolm serve` needs FastAPI and uvicorn ({error.name} is missing). "
            "Install them with `pip install 'autolm[serve]'`."
        ) from None


def create_app(*args, **kwargs):
    """See `autolm.serve.app.create_app`."""
    _require()
    from .app import create_app as build

    return build(*args, **kwargs)


def served_name(name: str) -> str:
    """The id the server lists for a model: a hub id as given, a local path by its last part."""
    path = Path(name).expanduser()
    if path.exists():
        return path.stem if path.suffix == ".gguf" else path.name
    return name


def load_for_serving(name: str, dtype: str | None = None, **kwargs) -> tuple[Any, Any]:
    """(model, tokenizer): a causal LM, or, for an encoder-only family (BERT), its base model."""
    from .. import models
    from ..auto import AutoModel, AutoModelForCausalLM
    from ..configuration import PretrainedConfig
    from ..tokenization import AutoTokenizer

    options = dict(kwargs)
    if dtype:
        options["dtype"] = dtype
    encoder = False
    if not str(name).endswith(".gguf"):
        try:
            config, _ = PretrainedConfig.get_config_dict(name, **kwargs)
        except (AutolmError, OSError):
            config = {}
        kind = models.canonical_model_type(config.get("model_type") or "")
        if kind is not None:
            encoder = "causal_lm" not in models.MODELS[kind]["tasks"]
    loader = AutoModel if encoder else AutoModelForCausalLM
    model = loader.from_pretrained(name, **options)
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    return model.eval(), tokenizer


def run_server(app, host: str = "127.0.0.1", port: int = 8000, grace: float = 30.0) -> None:
    """Serve `app` until SIGINT/SIGTERM. On the signal new requests get 503, running replies go on
    for up to `grace` seconds and are then ended (finish_reason "length"), and the server exits."""
    _require()
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            engine = getattr(app.state, "engine", None)
            if engine is not None:
                engine.drain(grace)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # the app logs one line per request itself
        timeout_graceful_shutdown=int(grace) + 5,
    )
    # uvicorn raises the signal it caught again once it has shut down; after a clean SIGTERM shutdown the
    # process should exit 0, so the handler it restores and re-raises to is a no-op
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: None)
    Server(config).run()
