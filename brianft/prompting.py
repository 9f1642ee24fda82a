"""How a request becomes model input, and an example becomes a supervised training sequence.

Labels are built from the prompt/target split tokenized here, never by searching for a
response template in the token stream (FINETUNING_NOTES pitfall 1). The EOS after the target
is supervised by position, so it stays a label even when pad and eos share an id (pitfall 2).
Chat-templated strings carry their own special tokens and are tokenized without adding more
(pitfall 3).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from brianft.schema import Example
from brianft.target import TargetFormat, example_target

# The fine-tuned model needs no instruction: the adapter learns the task. An empty system turn
# still keeps chat templates from inserting their own default (SmolLM2's is 15 tokens), and
# every prompt token costs training and inference compute (~40% of a sequence was template).
SYSTEM_PROMPT = ""
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


# The zero-shot baseline: a base model with no adapter learns the output format from this
# instruction and a few worked examples (written for this purpose; none is in any data split).
FEW_SHOT_INSTRUCTION = (
    "Extract the wallet intents of the request, one per line, as `action; field=value; ...`. "
    "Actions: swap, transfer, bridge, balance, approve, wrap, unwrap, deposit, withdraw, borrow, repay, "
    "stake, unstake, total_supply. Fields: token1, token2, amount, amount_out, chain, dest_chain, address, "
    "protocol. Copy values exactly as written. Answer `none` if the request is not a wallet action."
)
FEW_SHOT_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("trade 40 link into usdt on polygon", "swap; token1=link; token2=usdt; amount=40; chain=polygon"),
    ("pay carol.eth 12 dai", "transfer; token1=dai; amount=12; address=carol.eth"),
    ("move 3 eth from base over to optimism", "bridge; token1=eth; amount=3; chain=base; dest_chain=optimism"),
    ("how much gho do I own?", "balance; token1=gho"),
    ("supply 900 usdc to spark then stake 1 eth with lido", "deposit; token1=usdc; amount=900; protocol=spark\n"
     "stake; token1=eth; amount=1; protocol=lido"),
    ("what's the weather in lisbon", "none"),
)  # fmt: skip


def build_prompt(tokenizer, request: str, is_seq2seq: bool, *, few_shot: bool = False) -> str:
    system = FEW_SHOT_INSTRUCTION if few_shot else SYSTEM_PROMPT
    shots = FEW_SHOT_EXAMPLES if few_shot else ()
    if is_seq2seq:
        worked = "".join(f" Request: {q} Intents: {a}" for q, a in shots)
        return f"{system}{worked} Request: {request} Intents:" if few_shot else f"{system} {request}".lstrip()
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}]
        for question, answer in shots:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": request})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    worked = "".join(f"Request: {q}\nIntents: {a}\n\n" for q, a in shots)
    return f"{system}\n{worked}Request: {request}\nIntents:".lstrip()


def encode_prompt(tokenizer, request: str, is_seq2seq: bool, *, few_shot: bool = False) -> list[int]:
    text = build_prompt(tokenizer, request, is_seq2seq, few_shot=few_shot)
    templated = not is_seq2seq and bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


def encode_target(tokenizer, target: str) -> list[int]:
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.eos_token_id]


def encode_example(tokenizer, example: Example, is_seq2seq: bool, fmt: TargetFormat = "fields") -> Encoded:
    prompt_ids = encode_prompt(tokenizer, example.prompt, is_seq2seq)
    target_ids = encode_target(tokenizer, example_target(example, fmt=fmt))
    if is_seq2seq:
        return Encoded(input_ids=prompt_ids, labels=target_ids)
    return Encoded(input_ids=prompt_ids + target_ids, labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar length (little padding), in an order fixed by (seed, epoch).

    Shuffle, sort within windows of 50 batches, cut into batches, shuffle the batches: the
    order is random yet reproducible, which is what makes resume exact.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate_for_training(
    items: Sequence[Encoded], pad_id: int, is_seq2seq: bool, *, pad_to_multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padded label positions are IGNORE_INDEX whatever the pad id.

    Widths are rounded up to a multiple: fewer distinct shapes keep the CPU kernels' plans
    cached instead of rebuilt for every batch.
    """
    width = _round_up(max(len(item.input_ids) for item in items), pad_to_multiple_of)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    label_width = _round_up(max(len(item.labels) for item in items), pad_to_multiple_of) if is_seq2seq else width
    labels = torch.full((len(items), label_width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(items):
        input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        attention[row, : len(item.input_ids)] = 1
        labels[row, : len(item.labels)] = torch.tensor(item.labels)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def collate_for_generation(prompts: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts, so that every row's next token comes right after its prompt."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
