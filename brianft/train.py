"""LoRA fine-tuning: an explicit loop you can read top to bottom.

`train(config)` builds the data, loads the base model, adds LoRA, and runs optimizer steps:
length-grouped micro-batches, loss over supervised target tokens only (logits computed only
where a label is supervised), gradient accumulation normalised over the whole effective batch,
warmup + decay, periodic generation-based evaluation that keeps the best adapter, resumable
checkpoints, and a finished run directory. Under torchrun / accelerate launch the same loop
runs data-parallel: each rank takes its share of every step and LoRA gradients are averaged;
only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from peft import set_peft_model_state_dict
from tqdm.auto import tqdm
from transformers import get_scheduler

from brianft.config import Config, dump_config
from brianft.cpus import available_cpus
from brianft.data.dataset import build_splits
from brianft.evaluate import score_predictions
from brianft.infer import decode_generated, generate, native_bf16
from brianft.model import apply_lora, backbone_and_head, load_base_model
from brianft.normalize import Canonicalizer, Registry
from brianft.prompting import (
    IGNORE_INDEX,
    Encoded,
    collate_for_training,
    encode_example,
    length_grouped_batches,
)
from brianft.schema import Example

FINISHED_MARKER = "metrics.json"
SHAPE_BUCKET = 64


class RunDirError(RuntimeError):
    """The output directory holds a run that this command must not touch."""


@dataclass
class TrainState:
    """Everything besides tensors that resume needs: where in the data order we stand."""

    step: int = 0
    best_exact_match: float = -1.0
    best_step: int = 0
    history: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size())


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_bf16(setting: bool | str, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast. `auto` only where bf16 is native: emulated bf16
    on a CPU without AVX512-BF16 or AMX is far slower than float32 (a matrix product ~70x)."""
    native = native_bf16(device)
    if setting == "auto":
        return native
    if setting and not native:
        warnings.warn(
            f"train.bf16=true on a {device.type} without native bfloat16: it is emulated and can be many times"
            " slower than float32; set train.bf16=auto (or false)",
            stacklevel=2,
        )
    return bool(setting)


def prepare_run_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a finished run or silently restart an unfinished one."""
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    finished = (output_dir / FINISHED_MARKER).exists()
    if overwrite:
        shutil.rmtree(output_dir)
        return
    if finished:
        raise RunDirError(f"{output_dir} holds a finished run; pass --overwrite to replace it or pick --output-dir")
    if not resume:
        raise RunDirError(
            f"{output_dir} holds an unfinished run; pass --resume to continue it or --overwrite to start over"
        )


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = sorted((output_dir / "checkpoints").glob("step-*"))
    complete = [c for c in checkpoints if (c / "state.json").exists()]
    return complete[-1] if complete else None


def set_training_attention(model, attention: str, device: torch.device) -> None:
    """On a CPU, plain matmul-softmax attention: for these short sequences (~50 tokens) the
    fused CPU attention kernel (SDPA) took 17% of a training step's CPU time, mostly in its backward
    pass, and eager attention makes steps 9-19% faster (docs/BENCHMARKS.md). On a GPU the fused
    kernels win."""
    if attention == "auto":
        attention = "eager" if device.type == "cpu" else ""
    if attention:
        model.set_attn_implementation(attention)


def add_embedding_noise(model, alpha: float):
    """NEFTune (Jain et al., 2023): uniform noise of size alpha / sqrt(length x width) on the
    input embeddings in training mode; evaluation and generation see clean embeddings.
    Returns the hook handle."""

    def noisy(module, inputs, output):
        if not module.training:
            return output
        bound = alpha / math.sqrt(output.size(-2) * output.size(-1))
        return output + torch.empty_like(output).uniform_(-bound, bound)

    return model.get_input_embeddings().register_forward_hook(noisy)


def supervised_loss_sum(model, batch: dict[str, torch.Tensor], is_seq2seq: bool) -> torch.Tensor:
    """Summed cross-entropy over supervised tokens; the LM head runs only where labels are."""
    labels = batch["labels"]
    if is_seq2seq:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
        return F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
    backbone, head = backbone_and_head(model)
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = labels[:, 1:].flatten()
    supervised = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    # Round the row count up to a bucket (extra rows carry no label): a new matrix shape per
    # batch makes the CPU kernels re-plan every step, which slowed bf16 training over time.
    extra = -supervised.numel() % SHAPE_BUCKET
    positions = F.pad(supervised, (0, extra))
    picked = F.pad(targets[supervised], (0, extra), value=IGNORE_INDEX)
    logits = head(hidden[:, :-1].flatten(0, 1)[positions])
    return F.cross_entropy(logits.float(), picked, ignore_index=IGNORE_INDEX, reduction="sum")


def optimizer_step(
    model,
    optimizer,
    scheduler,
    micro_batches: list[list[Encoded]],
    *,
    pad_id: int,
    is_seq2seq: bool,
    device: torch.device,
    bf16: bool,
    max_grad_norm: float,
    ranks: Distributed,
) -> tuple[float, int]:
    """One update over several micro-batches (and ranks). The loss is the mean over every
    supervised token of the whole effective batch, not a mean of per-batch means
    (FINETUNING_NOTES pitfall 5). Returns (loss, supervised tokens)."""
    global_tokens = torch.tensor(float(sum(item.supervised for batch in micro_batches for item in batch)))
    if ranks.world > 1:
        dist.all_reduce(global_tokens)
    loss_total = 0.0
    for items in micro_batches:
        batch = {k: v.to(device) for k, v in collate_for_training(items, pad_id, is_seq2seq).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = supervised_loss_sum(model, batch, is_seq2seq) / global_tokens.item()
        loss.backward()
        loss_total += loss.item()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if ranks.world > 1:
        for p in trainable:
            if p.grad is not None:
                dist.all_reduce(p.grad)
        reduced = torch.tensor(loss_total)
        dist.all_reduce(reduced)
        loss_total = reduced.item()
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_total, int(global_tokens.item())


def total_steps(n_examples: int, config: Config, world: int) -> int:
    if config.train.max_steps:
        return config.train.max_steps
    per_step = config.train.batch_size * config.train.grad_accum * world
    return max(1, math.ceil(config.train.epochs * n_examples / per_step))


def step_batches(lengths: list[int], config: Config, step: int, ranks: Distributed) -> list[list[int]]:
    """The micro-batches this rank processes at optimizer step `step`, derived from (seed, step)
    alone so that a resumed run sees exactly the data an uninterrupted one would."""
    micro = config.train.grad_accum * ranks.world
    batches_per_epoch = math.ceil(len(lengths) / config.train.batch_size)
    out = []
    for k in range(micro):
        flat = step * micro + k
        epoch, position = divmod(flat, batches_per_epoch)
        if k % ranks.world == ranks.rank:
            out.append(length_grouped_batches(lengths, config.train.batch_size, config.train.seed, epoch)[position])
    return out


def validation_sample(examples: list[Example], k: int, seed: int) -> list[Example]:
    """The validation requests scored while training: a seeded sample of the whole split, kept in
    split order. The split is stored by source (curated first), so its first k requests were all
    curated ones and the best-checkpoint choice never saw a hand-written request."""
    if k >= len(examples):
        return list(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), k))
    return [examples[i] for i in chosen]


def evaluate_examples(
    model, tokenizer, examples: list[Example], canonicalizer, config: Config, is_seq2seq: bool, *, model_alone=False
):
    """Scores and predictions by generation, decoded as `Extractor.from_run` serves. `model_alone`:
    no close call goes to the rules' draft, so the scores are the model's own (the rules read the
    training templates' phrasings and would make every checkpoint look alike on validation)."""
    from brianft.constrain import DRAFT_TIEBREAK_NATS, request_grammars
    from brianft.data.spans import SpanFinder
    from brianft.extract import rule_drafts
    from brianft.rules import RulesExtractor

    prompts = [e.prompt for e in examples]
    generated = generate(
        model,
        tokenizer,
        prompts,
        is_seq2seq=is_seq2seq,
        batch_size=config.train.eval_batch_size,
        max_new_tokens=config.train.max_new_tokens,
        # drafts are faster (and break close calls), grammars constrain
        drafts=rule_drafts(RulesExtractor(canonicalizer), prompts, config.data.target_format),
        grammars=request_grammars(prompts, SpanFinder(canonicalizer), config.data.target_format),
        draft_tiebreak=0.0 if model_alone else DRAFT_TIEBREAK_NATS,
    )
    # An output cut at the token limit is a failure, as the Extractor serves it.
    predictions = [decode_generated(out, canonicalizer, config.train.max_new_tokens) for out in generated]
    return score_predictions(examples, predictions), predictions


def _save_trainer_state(path: Path, model, optimizer, scheduler, state: TrainState) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "adapter")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "rng_python": random.getstate(),
        },
        tmp / "trainer_state.pt",
    )
    (tmp / "state.json").write_text(json.dumps(asdict(state)))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in sorted((output_dir / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def train(config: Config, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Fine-tune and return the final metrics (also written to the run directory)."""
    tc = config.train
    device = pick_device(tc.device)
    ranks = setup_distributed(device)
    output_dir = Path(tc.output_dir)
    if ranks.is_main:
        prepare_run_dir(output_dir, resume=resume, overwrite=overwrite)
    if ranks.world > 1:
        dist.barrier()
    torch.set_num_threads(tc.threads or max(1, available_cpus() // ranks.world))
    bf16 = autocast_bf16(tc.bf16, device)
    precision = "bfloat16 autocast" if bf16 else "float32"
    if ranks.is_main:
        print(f"training on {device} in {precision}", file=sys.stderr)
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)

    canonicalizer = Canonicalizer(Registry.load(config.data.registry_dirs))
    splits = build_splits(config.data, canonicalizer)
    loaded = load_base_model(config.model)
    tokenizer, is_seq2seq = loaded.tokenizer, loaded.is_seq2seq
    set_training_attention(loaded.model, tc.attention, device)
    model = apply_lora(loaded, config.model.lora).to(device)
    if tc.neftune_alpha:
        add_embedding_noise(model, tc.neftune_alpha)
    fmt = config.data.target_format
    encoded = [encode_example(tokenizer, example, is_seq2seq, fmt) for example in splits.train]
    lengths = [len(e.input_ids) + (len(e.labels) if is_seq2seq else 0) for e in encoded]
    steps = total_steps(len(encoded), config, ranks.world)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = get_scheduler(
        tc.schedule if tc.schedule != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(tc.warmup_ratio * steps),
        num_training_steps=steps,
    )
    state = TrainState()
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        state = _restore(checkpoint, model, optimizer, scheduler, device)

    writer = None
    if ranks.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(dump_config(config))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"))
    validation = validation_sample(splits.validation, tc.eval_examples, tc.seed)
    model.train()
    progress = tqdm(total=steps, initial=state.step, desc="training", disable=not ranks.is_main, dynamic_ncols=True)
    started, tokens_seen = time.perf_counter(), 0
    while state.step < steps:
        micro_batches = step_batches(lengths, config, state.step, ranks)
        items = [[encoded[i] for i in batch] for batch in micro_batches]
        loss_total, step_tokens = optimizer_step(
            model, optimizer, scheduler, items, pad_id=tokenizer.pad_token_id, is_seq2seq=is_seq2seq,
            device=device, bf16=bf16, max_grad_norm=tc.max_grad_norm, ranks=ranks,
        )  # fmt: skip
        state.step += 1
        tokens_seen += step_tokens
        progress.update(1)
        progress.set_postfix(loss=f"{loss_total:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        record = {"step": state.step, "loss": loss_total, "lr": scheduler.get_last_lr()[0]}
        if ranks.is_main:
            writer.add_scalar("train/loss", loss_total, state.step)
        if tc.eval_every and state.step % tc.eval_every == 0 and state.step < steps:
            record.update(
                _evaluate_and_keep_best(
                    model, tokenizer, validation, canonicalizer, config, is_seq2seq, state, ranks, writer
                )
            )
        state.history.append(record)
        if state.step % tc.save_every == 0 and state.step < steps and ranks.is_main:
            _save_trainer_state(
                output_dir / "checkpoints" / f"step-{state.step:06d}", model, optimizer, scheduler, state
            )
            _prune_checkpoints(output_dir, tc.keep_checkpoints)
    progress.close()
    train_seconds = time.perf_counter() - started
    record = _evaluate_and_keep_best(
        model, tokenizer, validation, canonicalizer, config, is_seq2seq, state, ranks, writer
    )
    state.history[-1].update(record) if state.history else state.history.append({"step": state.step, **record})
    metrics: dict = {}
    if ranks.is_main:
        from brianft.run_report import finish_run

        metrics = finish_run(
            output_dir=output_dir,
            config=config,
            model=model,
            tokenizer=tokenizer,
            loaded=loaded,
            splits=splits,
            canonicalizer=canonicalizer,
            state=state,
            train_seconds=train_seconds,
            supervised_tokens=tokens_seen,
            precision=precision,
            evaluate=lambda examples: evaluate_examples(model, tokenizer, examples, canonicalizer, config, is_seq2seq),
        )
        writer.close()
    print(f"rank {ranks.rank}/{ranks.world} done: {state.step} steps", file=sys.stderr)
    if ranks.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def _evaluate_and_keep_best(
    model, tokenizer, validation, canonicalizer, config, is_seq2seq, state, ranks, writer
) -> dict:
    """Validation by generation on rank 0; the best adapter so far is kept in memory and on disk."""
    if not ranks.is_main or not validation:
        return {}
    scores, _ = evaluate_examples(model, tokenizer, validation, canonicalizer, config, is_seq2seq, model_alone=True)
    writer.add_scalar("validation/exact_match", scores["exact_match"], state.step)
    writer.add_scalar("validation/action_accuracy", scores["action_accuracy"], state.step)
    # A tie goes to the later checkpoint: the schedule has decayed further there, and a few dozen
    # validation requests often cannot tell two late checkpoints apart (then the earlier, noisier
    # one would be kept: step 150 of 283 scored 0.80 on the test split against the final's 0.92).
    if scores["exact_match"] >= state.best_exact_match:
        state.best_exact_match, state.best_step = scores["exact_match"], state.step
        model.save_pretrained(Path(config.train.output_dir) / "best_adapter")
    return {f"val_{k}": v for k, v in scores.items() if k != "examples"}


def _restore(checkpoint: Path, model, optimizer, scheduler, device) -> TrainState:
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / "adapter" / "adapter_model.safetensors"), device=str(device))
    set_peft_model_state_dict(model, weights)
    # Loaded on the CPU: the RNG states must be CPU byte tensors (mapped onto a GPU, resuming
    # there failed with "RNG state must be a torch.ByteTensor"), and the optimizer moves its
    # state onto the parameters' device itself.
    saved = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng_torch"])
    if saved.get("rng_cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(saved["rng_cuda"])
    random.setstate(saved["rng_python"])
    return TrainState(**json.loads((checkpoint / "state.json").read_text()))
