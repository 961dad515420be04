"""The `autolm` command. One function per subcommand; `main` only parses and dispatches.

Only this module prints.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys

from ..errors import AutolmError


def cmd_download(args: argparse.Namespace) -> int:
    from ..hub import open_repo

    repo = open_repo(
        args.model,
        revision=args.revision,
        hub=args.hub,
        cache_dir=args.cache_dir,
        token=args.token,
        force_download=args.force_download,
    )
    files = repo.list_files()
    if args.include:
        files = [f for f in files if any(fnmatch.fnmatch(f, g) for g in args.include)]
        if not files:
            print(f"No file of {args.model} matches {' '.join(args.include)}.", file=sys.stderr)
            return 1
    repo.fetch(files)
    print(repo.local_dir)
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def cmd_cache_ls(args: argparse.Namespace) -> int:
    from ..hub import cache

    repos = cache.scan(args.cache_dir)
    if not repos:
        print(f"The cache {args.cache_dir or cache.default_cache_dir()} holds no models.")
        return 0
    print(f"{'REPO':40} {'REVISION':40} {'REFS':16} {'FILES':>5} {'SIZE':>10}")
    for repo in repos:
        for rev in repo.revisions or [None]:
            if rev is None:
                print(f"{repo.repo_id:40} {'-':40} {'-':16} {0:>5} {_size(repo.size):>10}")
            else:
                refs = ",".join(rev.refs) or "-"
                print(f"{repo.repo_id:40} {rev.commit:40} {refs:16} {rev.files:>5} {_size(rev.size):>10}")
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from ..hub import cache

    problems = cache.verify(args.cache_dir, args.model)
    for p in problems:
        print(f"{p.kind.upper():10} {p.repo_id}: {p.path} ({p.detail})")
    if problems:
        print(
            f"{len(problems)} problem(s). Remove the affected revisions with `autolm cache rm MODEL` and download again."
        )
        return 1
    print("Cache OK.")
    return 0


def cmd_cache_rm(args: argparse.Namespace) -> int:
    from ..hub import cache

    freed = cache.remove(args.model, args.revision, args.cache_dir)
    print(f"Removed {args.model}{'@' + args.revision if args.revision else ''}: freed {_size(freed)}.")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .run import run_generate

    return run_generate(args)


def cmd_chat(args: argparse.Namespace) -> int:
    from .run import run_chat

    return run_chat(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import run_serve

    return run_serve(args)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .run import run_inspect

    return run_inspect(args)


def cmd_export(args: argparse.Namespace) -> int:
    from ..remote_code import export

    manifest = export(
        args.model,
        args.directory,
        revision=args.revision,
        hub=args.hub,
        cache_dir=args.cache_dir,
        token=args.token,
    )
    files = manifest["files"]
    print(
        f"Exported {args.model}@{manifest['revision'] or 'local'} to {args.directory}: {len(files)} files, "
        f"{_size(sum(f['size'] for f in files.values()))}."
    )
    if manifest["code_pin"]:
        code = sorted(f for f in files if f.endswith(".py"))
        print(f"Custom code: {', '.join(code)}")
        print(f"Code pin: {manifest['code_pin']}")
        print(
            f'Load it with trust_remote_code="{manifest["code_pin"]}" (works offline, local_files_only=True).'
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..remote_code import verify

    problems = verify(args.directory)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} difference(s) from the MANIFEST of {args.directory}.", file=sys.stderr)
        return 1
    print(f"{args.directory} matches its MANIFEST.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autolm", description="Load and run pretrained language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="download a model into the cache and print its local path")
    p.add_argument("model")
    p.add_argument("--revision")
    p.add_argument("--include", action="append", metavar="GLOB", help="only files matching GLOB (repeatable)")
    p.add_argument("--hub", choices=["huggingface", "modelscope"])
    p.add_argument("--cache-dir")
    p.add_argument("--token")
    p.add_argument("--force-download", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "export",
        help="copy a model with its tokenizer and custom code into DIR, with a MANIFEST (offline bundle)",
    )
    p.add_argument("model")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--revision")
    p.add_argument("--hub", choices=["huggingface", "modelscope"])
    p.add_argument("--cache-dir")
    p.add_argument("--token")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "verify", help="check an exported directory against its MANIFEST; exit 1 on any difference"
    )
    p.add_argument("directory", metavar="DIR")
    p.set_defaults(func=cmd_verify)

    c = sub.add_parser("cache", help="inspect and clean the model cache").add_subparsers(
        dest="cache_command", required=True
    )
    ls = c.add_parser("ls", help="list cached repos, revisions and sizes")
    ls.set_defaults(func=cmd_cache_ls)
    verify = c.add_parser(
        "verify", help="recompute blob hashes; exit 1 on corrupt, incomplete or dangling entries"
    )
    verify.add_argument("model", nargs="?")
    verify.set_defaults(func=cmd_cache_verify)
    rm = c.add_parser("rm", help="remove a cached repo or one revision")
    rm.add_argument("model")
    rm.add_argument("--revision")
    rm.set_defaults(func=cmd_cache_rm)
    for q in (ls, verify, rm):
        q.add_argument("--cache-dir")

    from .run import add_run_commands  # parsers only: torch loads when a command runs

    add_run_commands(sub, {"generate": cmd_generate, "chat": cmd_chat, "inspect": cmd_inspect})
    from .serve import add_serve_command

    add_serve_command(sub, cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except AutolmError as e:  # a bug (any other exception) shows its traceback
        if getattr(args, "debug", False):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
