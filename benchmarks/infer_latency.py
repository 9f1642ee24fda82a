"""Inference latency and throughput: brianft's extractor against a naive baseline, same requests.

Every variant runs in its own process (so its peak memory is its own) on the same test-split
requests of a finished run, after one uncounted warm-up request (the batched variants: after
one uncounted pass over as many *other* test requests, so that batch shapes' kernels are
planned, as in a server that has been running for a while, but the timed requests are new to
it: nothing about them, such as the canonical forms of their spans, is cached yet; a test split
too small to hold other requests warms up on the timed ones):

- naive:          the PEFT model as loaded (LoRA not merged, float32), transformers' `generate`,
                  greedy, one request at a time
- merged-fp32:    LoRA merged into the weights, float32, our decoding loop, no draft, unconstrained
- merged-bf16:    the same in bfloat16
- ours-free:      merged, dtype "auto" (bfloat16 on CPUs with native bf16), and the rules' guess of
                  each output verified in bulk (drafting.py), unconstrained
- ours:           what `Extractor.from_run` serves: `ours-free` with the output constrained to valid
                  intents whose values the request holds (constrain.py)
- ours-batched:   `ours` with --batch-size requests per call (what the server's micro-batches
                  do): throughput, not latency
- ours-file:      `ours` with all --batch-requests requests in one call, cut into batches of at
                  most --batch-size by length (what `brianft predict --input FILE` does)

For each: p50/p95 latency per request (batch 1), requests/s, peak resident memory, the speed-up
over naive, and how many outputs are identical to naive's (the text is the model's greedy
output in every unconstrained variant; bfloat16 may round a close call differently; the
constrained variants differ exactly where the constraint refused the model's choice).

    python benchmarks/infer_latency.py [--run runs/default] [--requests 40] [--batch-requests 160]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("naive", "merged-fp32", "merged-bf16", "ours-free", "ours", "ours-batched", "ours-file")
BATCHED = ("ours-batched", "ours-file")


def test_requests(run: str, count: int) -> list[str]:
    from brianft.config import load_config
    from brianft.data.dataset import build_splits
    from brianft.normalize import Canonicalizer

    config = load_config(f"{run}/config.yaml")
    return [example.prompt for example in build_splits(config.data, Canonicalizer.default()).test][:count]


def naive_generate(run: str):
    import torch

    from brianft.model import load_run
    from brianft.prompting import encode_prompt

    loaded = load_run(run)  # a PeftModel, fp32, adapter not merged
    tokenizer = loaded.tokenizer

    @torch.inference_mode()
    def generate(requests: list[str]) -> list[str]:
        out = []
        for request in requests:
            ids = torch.tensor([encode_prompt(tokenizer, request, False)])
            generated = loaded.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=96,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            out.append(tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True).strip())
        return out

    return generate


def extractor_generate(run: str, dtype: str, draft: bool, constrain: bool):
    from brianft.extract import Extractor

    extractor = Extractor.from_run(run, dtype=dtype, draft=draft, constrain=constrain)
    return lambda requests: [result.output or "" for result in extractor.extract_batch(requests)], extractor


def child(variant: str, run: str, requests: list[str], batch_size: int, warmup: list[str]) -> dict:
    import torch

    from brianft.cpus import available_cpus

    torch.set_num_threads(available_cpus())
    if variant == "naive":
        generate = naive_generate(run)
    else:
        dtype = {"merged-fp32": "float32", "merged-bf16": "bfloat16"}.get(variant, "auto")
        draft = variant in ("ours", "ours-free", *BATCHED)
        generate, extractor = extractor_generate(run, dtype, draft, constrain=variant in ("ours", *BATCHED))
        extractor.batch_size = batch_size if variant in BATCHED else 1
    generate(requests[:1])  # warm-up: first-call allocations and kernel plans
    outputs, latencies = [], []
    if variant in BATCHED:
        per_call = batch_size if variant == "ours-batched" else len(requests)
        for start in range(0, len(warmup), per_call):  # steady state, on other requests
            generate(warmup[start : start + per_call])
        started = time.perf_counter()
        for start in range(0, len(requests), per_call):
            outputs += generate(requests[start : start + per_call])
        elapsed = time.perf_counter() - started
        latencies = [elapsed / len(requests)] * len(requests)
    else:
        for request in requests:
            started = time.perf_counter()
            outputs += generate([request])
            latencies.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"latencies": latencies, "outputs": outputs, "peak_rss_mb": peak, "total_s": sum(latencies)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/default")
    parser.add_argument("--requests", type=int, default=40, help="requests timed one at a time")
    parser.add_argument("--batch-requests", type=int, default=160, help="requests for the batched variant")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        count = args.batch_requests if args.child in BATCHED else args.requests
        available = test_requests(args.run, 2 * count if args.child in BATCHED else count)
        requests, warmup = available[:count], available[count:] or available[:count]
        result = child(args.child, args.run, requests, args.batch_size, warmup)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for variant in args.variants.split(","):
        print(f"running {variant}...", flush=True)
        command = [sys.executable, __file__, "--child", variant, "--run", args.run, "--requests", str(args.requests)]
        command += ["--batch-requests", str(args.batch_requests), "--batch-size", str(args.batch_size)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
    report(results, args)


def report(results: dict, args) -> None:
    naive = results.get("naive")
    print(f"\n{'variant':<14}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>8}{'peak MB':>9}{'speed-up':>10}{'same as naive':>15}")
    summary = {}
    for variant, r in results.items():
        n = len(r["latencies"])
        per_s = n / r["total_s"]
        row = {
            "p50_ms": 1000 * percentile(r["latencies"], 0.5),
            "p95_ms": 1000 * percentile(r["latencies"], 0.95),
            "requests_per_s": per_s,
            "peak_rss_mb": r["peak_rss_mb"],
            "requests": n,
        }
        same = "-"
        if naive is not None:
            row["speedup"] = per_s / (len(naive["latencies"]) / naive["total_s"])
            paired = list(zip(naive["outputs"], r["outputs"], strict=False))
            row["identical_to_naive"] = sum(a == b for a, b in paired) / len(paired)
            same = f"{sum(a == b for a, b in paired)}/{len(paired)}"
        summary[variant] = row
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        batch = f" (batches of <= {args.batch_size}; latency = total / requests)" if variant in BATCHED else ""
        print(
            f"{variant:<14}{row['p50_ms']:>9.0f}{row['p95_ms']:>9.0f}{per_s:>8.2f}{row['peak_rss_mb']:>9.0f}"
            f"{speedup:>10}{same:>15}{batch}"
        )
    print(json.dumps({"machine": f"{os.cpu_count()} CPUs", "run": args.run, **summary}))


if __name__ == "__main__":
    main()
