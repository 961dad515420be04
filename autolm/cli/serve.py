"""`autolm serve`: load one model and serve it over HTTP in OpenAI's API shapes (see `autolm.serve`)."""

from __future__ import annotations

import argparse
import logging
import sys

from .run import resolve_model, setup


def run_serve(args: argparse.Namespace) -> int:
    setup(args)
    # one line per request on stderr, unless --quiet
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.getLogger("autolm").setLevel(level)
    logging.getLogger("autolm").handlers[0].setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    from ..serve import create_app, load_for_serving, run_server, served_name

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    name = resolve_model(args)
    options = {"hub": args.hub} if args.hub else {}
    model, tokenizer = load_for_serving(name, dtype=args.dtype, **options)
    model_id = served_name(name)
    app = create_app(
        model,
        tokenizer,
        model_id,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_context=args.max_context,
        aliases=(name,),
    )
    if not args.quiet:
        print(
            f"Serving {model_id} ({type(model).__name__}) on http://{args.host}:{args.port}/ "
            f"(chat page at /, OpenAI API at /v1). Ctrl-C stops.",
            file=sys.stderr,
            flush=True,
        )
    run_server(app, args.host, args.port)
    return 0


def add_serve_command(sub: argparse._SubParsersAction, command) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: OpenAI-compatible API and a chat page")
    p.add_argument(
        "model",
        nargs="?",
        help="a model directory, hub id or .gguf file (default: the embedded SmolLM2-135M-Instruct GGUF)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", metavar="KEY", help="require `Authorization: Bearer KEY` on /v1/*")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="rows decoded together (default 8)")
    p.add_argument(
        "--max-queue", type=int, default=64, metavar="N", help="requests that may wait (default 64)"
    )
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        metavar="N",
        help="prompt + reply tokens (default: the model's)",
    )
    p.add_argument("--hub", choices=["huggingface", "modelscope"])
    p.add_argument("--dtype", default=None, help="weights dtype: auto, float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch")
    p.add_argument("--quiet", "-q", action="store_true", help="no request log or status lines")
    p.add_argument("--debug", action="store_true", help="debug logging; errors show their traceback")
    p.set_defaults(func=command)
