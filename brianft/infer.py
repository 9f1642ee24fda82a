"""Generation and the path from raw model text to canonical intents."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from brianft.normalize import Canonicalizer
from brianft.prompting import collate_for_generation, encode_prompt
from brianft.schema import Intent
from brianft.target import parse_output


@dataclass(frozen=True)
class Prediction:
    """What one request turned into: intents, or an error; warnings either way."""

    text: str
    intents: list[Intent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def decode_prediction(text: str, canonicalizer: Canonicalizer) -> Prediction:
    """Parse and canonicalise model output. Bad fields are dropped with a warning; an output
    that cannot be read at all, or names an unknown action, is an error, never a guess."""
    parsed = parse_output(text)
    if parsed.error is not None:
        return Prediction(text=text, error=str(parsed.error))
    intents, warnings = [], []
    for index, raw in enumerate(parsed.intents, start=1):
        result = canonicalizer.intent(raw)
        if result.intent is None:
            return Prediction(text=text, error=f"intent {index}: " + "; ".join(map(str, result.errors)))
        intents.append(result.intent)
        warnings += [f"intent {index}: {problem}" for problem in result.problems]
    return Prediction(text=text, intents=intents, warnings=warnings)


def generate_texts(
    model,
    tokenizer,
    requests: Sequence[str],
    *,
    is_seq2seq: bool,
    batch_size: int = 16,
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy generation, batched with left padding, in the order of `requests`.

    A peft model's LoRA weights are merged into the base for the duration: one matmul per
    layer instead of three is most of the cost of a small model's decoding step on a CPU.
    """
    was_training = model.training
    model.eval()
    with merged_lora(model):
        return _generate(model, tokenizer, requests, is_seq2seq, batch_size, max_new_tokens, was_training)


@contextmanager
def merged_lora(model) -> Iterator[None]:
    merge = getattr(model, "merge_adapter", None)
    if merge is None or getattr(model, "merged", False):
        yield
        return
    with torch.no_grad():
        merge()
    try:
        yield
    finally:
        with torch.no_grad():
            model.unmerge_adapter()


@torch.inference_mode()
def _generate(model, tokenizer, requests, is_seq2seq, batch_size, max_new_tokens, was_training) -> list[str]:
    prompts = [encode_prompt(tokenizer, request, is_seq2seq) for request in requests]
    # Similar lengths together waste less padding; results are put back in order afterwards.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {
            k: v.to(device)
            for k, v in collate_for_generation([prompts[i] for i in chunk], tokenizer.pad_token_id).items()
        }
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated if is_seq2seq else generated[:, batch["input_ids"].shape[1] :]
        for row, index in enumerate(chunk):
            outputs[index] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
    model.train(was_training)
    return outputs
