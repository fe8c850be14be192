"""``dlm-decode serve`` under load: continuous batching against one request at a time and against fixed batches.

For each batching mode the script starts ``dlm-decode serve`` (a process of its own, on a free loopback port),
and the ``openai`` client drives it with ``--requests`` streamed completions (prompts of the embedded suite's test
split, ``max_tokens`` = ``--max-tokens``) at each bounded concurrency (``--concurrency``: that many requests in
flight at once). It prints, per mode and concurrency: requests/s, generated tokens/s (the usage the server
reports), p50 and p99 latency (request to last chunk) and p50 time to first chunk (request to the first chunk
with text). Modes: ``continuous`` (``--max-batch N``, requests join the running batch at a step boundary),
``one`` (``--max-batch 1``: one request at a time), ``fixed`` (``--batching fixed --max-batch N``: a batch runs
until all its rows finish before the next starts). Every mode must give the same texts (temperature 0); the
script checks it.

    python benchmarks/serve.py [-c CFG] [key=value ...] [--concurrency 1,8,32] [--requests 64] [--max-batch 32]
    python benchmarks/serve.py -c configs/decoders/apd.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai

from dlm_decode.eval.tasks import load_examples
from dlm_decode.serve.app import wait_until_healthy

MODES = {
    "continuous": ["--batching", "continuous"],
    "one": ["--batching", "continuous", "--max-batch", "1"],
    "fixed": ["--batching", "fixed"],
}


@dataclass
class Result:
    text: str
    tokens: int
    latency: float
    first_chunk: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(config: list[str], overrides: list[str], mode: str, max_batch: int, threads: int):
    """``dlm-decode serve`` in a process of its own for ``mode``; yields its base URL, stops it with SIGTERM."""
    port = free_port()
    options = [*MODES[mode]] + ([] if "--max-batch" in MODES[mode] else ["--max-batch", str(max_batch)])
    command = [sys.executable, "-m", "dlm_decode.cli", "serve", *(f"-c{c}" for c in config), *overrides]
    command += ["--port", str(port), "--threads", str(threads), *options]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, 300)
        yield url
    finally:
        process.terminate()
        process.wait(60)


def one_request(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> Result:
    """A streamed completion: its text, generated tokens, latency and time to first chunk."""
    started = time.perf_counter()
    first, pieces, tokens = None, [], 0
    chunks = client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].text:
            first = first or time.perf_counter() - started
            pieces.append(chunk.choices[0].text)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - started
    return Result("".join(pieces), tokens, latency, latency if first is None else first)


def drive(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> tuple[list[Result], float]:
    """Every prompt, ``concurrency`` in flight at a time: the results in order and the wall seconds."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    one_request(client, model, prompts[0], max_tokens)  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: one_request(client, model, p, max_tokens), prompts))
    return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", default=[], help="decoder config (default llada.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--concurrency", default="1,8,32", help="requests in flight at once (comma-separated)")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level (default 64)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    parser.add_argument("--max-batch", type=int, default=32, help="the servers' --max-batch (default 32)")
    parser.add_argument("--modes", default="continuous,one,fixed", help=f"of {', '.join(MODES)}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the server (default 1)")
    args = parser.parse_args()
    config = args.config or ["configs/decoders/llada.yaml"]
    levels = [int(c) for c in args.concurrency.split(",")]
    examples = load_examples(None, "test", args.requests)
    prompts = [ex.prompt for ex in examples][:: max(1, len(examples) // args.requests)][: args.requests]
    print(f"config {' + '.join(config)} {' '.join(args.overrides)}; {len(prompts)} requests per level, ", end="")
    print(f"max_tokens {args.max_tokens}, --max-batch {args.max_batch}, {args.threads} torch thread(s)")
    columns = ["requests/s", "generated tokens/s", "p50 latency (s)", "p99 latency (s)", "p50 first chunk (s)"]
    print("| batching | concurrency | " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    texts: dict[int, list[str]] = {}
    rates: dict[tuple[str, int], float] = {}
    for mode in args.modes.split(","):
        with server(config, args.overrides, mode, args.max_batch, args.threads) as url:
            for level in levels:
                results, wall = drive(url, prompts, level, args.max_tokens)
                if texts.setdefault(level, [r.text for r in results]) != [r.text for r in results]:
                    raise SystemExit(f"{mode} at concurrency {level} gave other texts than the first mode")
                tokens = sum(r.tokens for r in results)
                rates[mode, level] = tokens / wall
                latencies = [r.latency for r in results]
                print(
                    f"| {mode} | {level} | {len(results) / wall:.2f} | {tokens / wall:.0f} | "
                    f"{statistics.median(latencies):.3f} | {percentile(latencies, 99):.3f} | "
                    f"{statistics.median(r.first_chunk for r in results):.3f} |",
                    flush=True,
                )
    for level in levels:
        if ("continuous", level) in rates and ("one", level) in rates:
            ratio = rates["continuous", level] / rates["one", level]
            print(f"continuous / one at a time, concurrency {level}: {ratio:.2f}x generated tokens/s")


if __name__ == "__main__":
    main()
