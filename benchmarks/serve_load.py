"""Serving load: latency and throughput of `brianft serve` with continuous batching, micro-batching, and none.

The server runs in this process (a uvicorn thread on loopback) around one extractor, loaded once;
an asyncio client drives a bounded load: `--clients` concurrent connections send `--requests`
POST /v1/extract requests in total, prompts drawn in turn from the curated dataset. The same load
runs on the same extractor with: continuous batching (a decoder-only model only: prompts join the
running batch between forward passes, `--max-batch-size`, `--max-wait-ms`), micro-batches (one
`extract_batch` call per batch, run to its end), micro-batches without waiting (a batch is what
queued up while the previous one ran), and no batching (max_batch_size=1). One uncounted pass over
the prompts comes first, so that every variant meets them with the same caches, and each variant
is warmed up with a few uncounted requests. Latency is measured by the
client, per request. The client shares the process (and the GIL) with the server in every
variant, so compare the rows, not the absolute figures with another machine's.

    python benchmarks/serve_load.py [--model rules|RUN] [--clients 16] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time


def load_prompts(limit: int) -> list[str]:
    from brianft.data.dataset import load_curated
    from brianft.normalize import Canonicalizer

    return [example.prompt for example in load_curated(Canonicalizer.default())][:limit]


async def drive(url: str, prompts: list[str], clients: int, total: int) -> dict:
    """`total` requests from `clients` concurrent connections; per-request latency in seconds."""
    import httpx

    latencies: list[float] = []
    failures = 0
    sent = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent, failures
        while sent < total:
            prompt = prompts[sent % len(prompts)]
            sent += 1  # no await between the check and here: the count is exact
            started = time.perf_counter()
            response = await http.post("/v1/extract", json={"prompt": prompt})
            latencies.append(time.perf_counter() - started)
            failures += response.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await http.get("/health")
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "failures": failures,
        "wall_s": wall,
        "rps": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rules", help="'rules', a training run or a merged model directory")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--requests", type=int, default=400, help="requests per variant")
    parser.add_argument("--max-batch-size", type=int, default=16, help="micro-batch bound when batching is on")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="micro-batch wait when batching is on")
    parser.add_argument("--prompts", type=int, default=200, help="distinct curated prompts used")
    parser.add_argument("--max-new-tokens", type=int, help="generation length cap (model backends); default: the run's")
    args = parser.parse_args()

    from brianft.config import ServeConfig
    from brianft.extract import Extractor
    from brianft.serve import serve_in_thread

    generation = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    extractor = Extractor.load(args.model, batch_size=args.max_batch_size, **generation)
    prompts = load_prompts(args.prompts)
    wait = f"wait {args.max_wait_ms:g} ms"
    off = "off"
    settings = {  # port 0: a free port
        f"micro-batches, {wait}": ServeConfig(
            port=0, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, continuous_batching=False
        ),
        "micro-batches, no wait": ServeConfig(
            port=0, max_batch_size=args.max_batch_size, max_wait_ms=0, continuous_batching=False
        ),
        off: ServeConfig(port=0, max_batch_size=1, max_wait_ms=0, continuous_batching=False),
    }
    if extractor.stream() is not None:  # a decoder-only model: requests join the running batch
        continuous = ServeConfig(port=0, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
        settings = {f"continuous, {wait}": continuous, **settings}
    # Every variant meets the same prompts with the same caches (canonical forms of their spans):
    # one uncounted pass over them all first.
    extractor.extract_batch([prompts[i % len(prompts)] for i in range(min(args.requests, len(prompts)))])
    results = {}
    for variant, config in settings.items():
        print(f"batching {variant}: {args.requests} requests from {args.clients} clients...", flush=True)
        with serve_in_thread(extractor, config) as url:
            asyncio.run(drive(url, prompts, args.clients, args.clients))  # warm-up, not counted
            results[variant] = asyncio.run(drive(url, prompts, args.clients, args.requests))
    print(f"\n{'batching':<26}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>9}{'failed':>8}{'vs off':>9}")
    for variant, r in results.items():
        ratio = r["rps"] / results[off]["rps"]
        print(f"{variant:<26}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['rps']:>9.1f}{r['failures']:>8}{ratio:>8.2f}x")
    machine = f"{os.cpu_count()} CPUs"
    print(json.dumps({"machine": machine, "model": args.model, "clients": args.clients, **results}))


if __name__ == "__main__":
    main()
