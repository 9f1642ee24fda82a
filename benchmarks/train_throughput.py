"""Training throughput: brianft's trainer against a naive Hugging Face Trainer, same data.

Each variant runs in its own process (so peak memory is its own) for the same number of
optimizer steps on the same training examples, and reports supervised target tokens per
second, seconds per step (first step excluded: warm-up) and peak resident memory:

- naive:        transformers.Trainer, loss over the whole sequence, every batch padded to the
                longest example, LoRA on all linear layers, fp32
- ours-same-lora: our step (length-grouped batches, dynamic padding, loss and LM head only on
                supervised tokens), same LoRA, precision and attention kernel as naive
- ours-default-sdpa: ours-default with PyTorch's fused attention kernel (`train.attention=sdpa`)
- ours-default: our step with the default config (configs/default.yaml: its LoRA blocks, bf16
                autocast where this CPU computes bf16 natively, and `train.attention`: eager on a CPU)

    python benchmarks/train_throughput.py [--steps 12] [--batch-size 16] [--base smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("naive", "ours-same-lora", "ours-default-sdpa", "ours-default")


def _setup(base: str, default: bool, attention: str | None = None):
    import torch

    from brianft.config import load_config
    from brianft.data.dataset import build_splits
    from brianft.model import apply_lora, load_base_model
    from brianft.normalize import Canonicalizer
    from brianft.prompting import encode_example
    from brianft.train import set_training_attention

    overrides = [f"model.base={base}", "data.synthetic_test=0"] + (
        [f"train.attention={attention}"] if attention else []
    )
    config = load_config("configs/default.yaml", overrides)
    # naive and ours-same-lora: LoRA on every block; ours-default: whatever the config says
    lora = config.model.lora if default else config.model.lora.model_copy(update={"top_layers": None})
    splits = build_splits(config.data, Canonicalizer.default())
    loaded = load_base_model(config.model)
    if default:  # the configured attention kernel (eager on a CPU); the others keep the model's own
        set_training_attention(loaded.model, config.train.attention, torch.device("cpu"))
    model = apply_lora(loaded, lora)
    encoded = [encode_example(loaded.tokenizer, e, loaded.is_seq2seq) for e in splits.train]
    return config, loaded, model, encoded


def run_ours(base: str, steps: int, batch_size: int, default: bool, attention: str | None = None) -> dict:
    import torch
    from transformers import get_scheduler

    from brianft.prompting import length_grouped_batches
    from brianft.train import Distributed, autocast_bf16, optimizer_step

    config, loaded, model, encoded = _setup(base, default, attention)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = get_scheduler("constant", optimizer)
    batches = length_grouped_batches([len(e.input_ids) for e in encoded], batch_size, seed=0, epoch=0)
    model.train()
    times, tokens = [], []
    for step in range(steps):
        started = time.perf_counter()
        _, supervised = optimizer_step(
            model, optimizer, scheduler, [[encoded[i] for i in batches[step]]],
            pad_id=loaded.tokenizer.pad_token_id, is_seq2seq=loaded.is_seq2seq, device=torch.device("cpu"),
            bf16=default and autocast_bf16(config.train.bf16, torch.device("cpu")), max_grad_norm=1.0,
            ranks=Distributed(),
        )  # fmt: skip
        times.append(time.perf_counter() - started)
        tokens.append(supervised)
    return {"times": times, "supervised": tokens}


def run_naive(base: str, steps: int, batch_size: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    _, loaded, model, encoded = _setup(base, False)
    width = max(len(e.input_ids) for e in encoded)
    pad = loaded.tokenizer.pad_token_id
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in encoded:
        padding = width - len(e.input_ids)
        rows["input_ids"].append(e.input_ids + [pad] * padding)
        rows["attention_mask"].append([1] * len(e.input_ids) + [0] * padding)
        rows["labels"].append(e.input_ids + [-100] * padding)  # the whole sequence is supervised
    dataset = Dataset.from_dict(rows).with_format("torch")
    target_tokens = [e.supervised for e in encoded]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._started)

    timer = StepTimer()
    args = TrainingArguments(
        output_dir="/tmp/brianft-bench-naive",
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    torch.manual_seed(0)
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[timer]).train()
    # The same target tokens are learnt per example; the naive run just pays for more.
    mean_target = sum(target_tokens) / len(target_tokens)
    return {"times": timer.times, "supervised": [int(mean_target * batch_size)] * len(timer.times), "width": width}


def child(variant: str, base: str, steps: int, batch_size: int) -> None:
    import torch

    from brianft.cpus import available_cpus

    torch.set_num_threads(available_cpus())
    if variant == "naive":
        result = run_naive(base, steps, batch_size)
    else:
        attention = "sdpa" if variant == "ours-default-sdpa" else None
        result = run_ours(base, steps, batch_size, default=variant.startswith("ours-default"), attention=attention)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def summarise(result: dict) -> dict:
    times, tokens = result["times"][1:], result["supervised"][1:]  # first step: warm-up
    return {
        "s_per_step": sum(times) / len(times),
        "supervised_tokens_per_s": sum(tokens) / sum(times),
        "peak_rss_mb": result["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; naive is the baseline")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.base, args.steps, args.batch_size)
        return
    results = {}
    for variant in args.variants.split(","):
        print(f"running {variant} ({args.steps} steps of {args.batch_size})...", flush=True)
        command = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps)]
        command += ["--batch-size", str(args.batch_size), "--base", args.base]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results[variant] = summarise(json.loads(line.removeprefix("RESULT ")))
    naive = results.get("naive")
    print(f"\n{'variant':<18}{'s/step':>9}{'sup tok/s':>11}{'peak MB':>9}{'speed-up':>10}")
    for variant, r in results.items():
        ratio = f"{r['supervised_tokens_per_s'] / naive['supervised_tokens_per_s']:>9.2f}x" if naive else "-"
        print(
            f"{variant:<18}{r['s_per_step']:>9.2f}{r['supervised_tokens_per_s']:>11.1f}{r['peak_rss_mb']:>9.0f}{ratio}"
        )
    print(json.dumps({"machine": f"{os.cpu_count()} CPUs", **results}))


if __name__ == "__main__":
    main()
