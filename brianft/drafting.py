"""Greedy decoding that checks drafted tokens in bulk (draft-and-verify).

Why: on a CPU, one forward pass of a small model costs about the same for one new token as for
a dozen, because reading the weights dominates; and an intent line mostly repeats a cheap guess
of it (the rule-based extractor's output, `brianft.rules`). So each step feeds the model the
tokens it has not seen yet plus a *draft* of the next ones, and keeps every drafted token the
model's own argmax agrees with, plus the model's token at the first disagreement.

The result is the model's greedy output, whatever the draft: a drafted token survives only where
greedy decoding would have produced it (up to float rounding between a one-token and a
many-token forward pass). A wrong draft costs time, never correctness. One deliberate exception,
under constrained decoding only: a drafted action or field name that the model finds nearly as
likely as its own choice is written instead (`ConstrainedPicker.name_tiebreak`).

Rows of a batch advance independently: each keeps its own position ids, and rejected draft
tokens stay in the KV cache but are masked out of attention, so no cache is ever cropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from brianft.constrain import TOP_K, ConstrainedPicker
from brianft.prompting import collate_for_generation

# Later drafts are shorter: after a disagreement the draft is a resynchronised guess.
RESYNC_LOOKAHEAD = 8


@dataclass
class Row:
    pending: list[int]  # tokens the cache has not seen yet: the prompt, then the last generated token
    draft: list[int]
    redraft: Callable[[list[int]], list[int]] | None = None  # a fresh guess of what follows `generated`
    generated: list[int] = field(default_factory=list)
    seen: int = 0  # tokens in the cache that count (the next position id)
    cursor: int = 0  # where in the draft the generated text currently is
    done: bool = False
    picker: ConstrainedPicker | None = None


@dataclass
class _Batch:
    """Rows decoded together: their KV cache and attention mask (one row each, same width)."""

    rows: list[Row]
    cache: DynamicCache
    mask: torch.Tensor


def draft_verify_generate(
    body: torch.nn.Module,
    head: torch.nn.Module,
    prompts: Sequence[list[int]],
    drafts: Sequence[list[int]],
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    redrafts: Sequence[Callable[[list[int]], list[int]]] | None = None,
    pickers: Sequence[ConstrainedPicker] | None = None,
    batches: Sequence[list[int]] | None = None,
    max_rows: int | None = None,
) -> list[list[int]]:
    """Greedy continuations of `prompts` (without EOS), verifying `drafts` as it goes.
    `redrafts` (per prompt: generated tokens -> a guess of the next ones) feed later drafts where
    the model left the draft and the draft's own tokens cannot be lined up again.
    `pickers` (one per prompt) constrain each choice to valid outputs (`brianft.constrain`): the
    result is then the constrained greedy output, whatever the draft.

    `batches` (lists of indices into `prompts`; default: all of them at once) start one at a
    time with one pass over their prompts and whole drafts. The rows a batch's first pass leaves
    unfinished (a wrong draft) join a single pool of stragglers from every batch, which advances a
    pass whenever admitting the next batch's leftovers would exceed `max_rows` rows, and to the
    end after the last batch. Why: a pass costs ~30 ms on a CPU before its first token, and
    each batch's own tail of a few slow rows paid that for every token; pooled, the tails share
    their passes, and their few tokens a row are not padded to a new batch's prompt width.

    `body` is the decoder stack (hidden states out), `head` the output projection: logits are
    computed only where a token is chosen, never over the prompt.
    """
    redrafts = redrafts if redrafts is not None else [None] * len(prompts)
    pickers = pickers if pickers is not None else [None] * len(prompts)
    rows = [
        Row(pending=list(prompt), draft=list(draft), redraft=redraft, picker=picker)
        for prompt, draft, redraft, picker in zip(prompts, drafts, redrafts, pickers, strict=True)
    ]
    decoder = DraftVerifyDecoder(
        body,
        head,
        eos_id=eos_id,
        pad_id=pad_id,
        max_new_tokens=max_new_tokens,
        max_rows=max_rows or len(prompts),
    )
    for indices in batches if batches is not None else [list(range(len(prompts)))]:
        decoder.start([rows[i] for i in indices])
    decoder.finish()
    return [row.generated for row in rows]


class DraftVerifyDecoder:
    """The state of draft-and-verify decoding between passes: the pool of unfinished rows.

    `start` admits a batch of new rows with one pass over their prompts and whole drafts; the
    rows it leaves unfinished join the pool, which `advance` moves on by one pass. Rows may keep
    arriving while earlier ones decode (continuous batching: the server), and a row's result is
    final once `row.done`. The pool is advanced first whenever admitting a batch's leftovers would
    make it wider than `max_rows`.
    """

    def __init__(
        self,
        body: torch.nn.Module,
        head: torch.nn.Module,
        *,
        eos_id: int,
        pad_id: int,
        max_new_tokens: int,
        max_rows: int,
        prefix: PrefixCache | None = None,
    ) -> None:
        self.body, self.head = body, head
        self.prefix = prefix if prefix is not None else PrefixCache()
        self.eos_id, self.pad_id, self.max_new_tokens, self.max_rows = eos_id, pad_id, max_new_tokens, max_rows
        self.device = next(body.parameters()).device
        self.pool: _Batch | None = None

    @property
    def busy(self) -> bool:
        return self.pool is not None and bool(self.pool.rows)

    @torch.inference_mode()
    def start(self, rows: list[Row]) -> None:
        if not rows:
            return
        batch = _start(self.body, rows, self.device, self.prefix)
        self._step(batch)
        while self.busy and len(self.pool.rows) + len(batch.rows) > self.max_rows:
            self.advance()
        self.pool = _merge(self.pool, batch)

    @torch.inference_mode()
    def advance(self) -> None:
        if self.busy:
            self._step(self.pool)

    def finish(self) -> None:
        while self.busy:
            self.advance()

    def _step(self, batch: _Batch) -> None:
        _step(
            self.body,
            self.head,
            batch,
            top_k=TOP_K if any(row.picker for row in batch.rows) else 1,  # a picker may refuse the best
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            max_new_tokens=self.max_new_tokens,
        )


class PrefixCache:
    """The KV cache of the token prefix every prompt so far has shared (the chat template's
    opening), computed once and copied into each new batch. Why: a forward pass costs ~40 ms on
    a CPU before its first token, and running the prefix for every batch was a tenth of the time
    of calls of 32 requests. A prompt that shares less of it cuts it back: the cache of a prefix
    of a prefix is its first columns (attention is causal). Valid for one model, weights unchanged.
    """

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values of one row

    def cache_for(self, body: torch.nn.Module, prompts: Sequence[list[int]], device) -> tuple[int, DynamicCache]:
        """How many leading tokens of `prompts` are in the returned cache (one row per prompt)."""
        shared = _shared_prefix(prompts)
        opening = prompts[0][:shared]
        agreed = next((i for i, (a, b) in enumerate(zip(self.ids, opening, strict=False)) if a != b), None)
        agreed = min(len(self.ids), shared) if agreed is None else agreed
        if agreed == 0 and shared:
            self._compute(body, opening, device)
            agreed = shared
        elif agreed < len(self.ids):
            self.ids = self.ids[:agreed]
            self.layers = [(k[:, :, :agreed], v[:, :, :agreed]) for k, v in self.layers]
        cache = DynamicCache()
        if agreed:
            for index, (keys, values) in enumerate(self.layers):
                cache.update(keys.repeat(len(prompts), 1, 1, 1), values.repeat(len(prompts), 1, 1, 1), index)
        return agreed, cache

    def _compute(self, body: torch.nn.Module, ids: list[int], device) -> None:
        cache = DynamicCache()
        positions = torch.arange(len(ids), device=device)[None]
        body(input_ids=torch.tensor([ids], device=device), position_ids=positions, cache=cache, use_cache=True)
        self.ids, self.layers = list(ids), [(layer.keys, layer.values) for layer in cache.layers]


def _start(body: torch.nn.Module, rows: list[Row], device, prefix: PrefixCache) -> _Batch:
    """A batch of fresh rows (`pending` = the whole prompt), with the prefix their prompts share
    already in its cache: computed once per `prefix` cache, then copied to every row."""
    shared, cache = prefix.cache_for(body, [row.pending for row in rows], device)
    for row in rows:
        row.pending, row.seen = row.pending[shared:], shared
    return _Batch(rows, cache, torch.ones((len(rows), shared), dtype=torch.long, device=device))


def _step(body, head, batch: _Batch, *, top_k: int, eos_id: int, pad_id: int, max_new_tokens: int) -> None:
    """One forward pass for every row of `batch`; finished rows leave it."""
    proposals = [_propose(row) for row in batch.rows]
    ids, new_mask, positions = _feed(batch.rows, proposals, pad_id, batch.mask.device)
    batch.mask = torch.cat([batch.mask, new_mask], dim=1)
    hidden = body(
        input_ids=ids, attention_mask=batch.mask, position_ids=positions, cache=batch.cache, use_cache=True
    ).last_hidden_state
    choices = _choices(head, hidden, [len(p) + 1 for p in proposals], top_k)
    for b, (row, proposal) in enumerate(zip(batch.rows, proposals, strict=True)):
        rejected = _accept(row, proposal, choices[b], eos_id, max_new_tokens)
        if rejected:
            batch.mask[b, batch.mask.shape[1] - rejected :] = 0
    keep = [b for b, row in enumerate(batch.rows) if not row.done]
    if len(keep) < len(batch.rows) and keep:
        index = torch.tensor(keep, device=batch.mask.device)
        batch.cache.batch_select_indices(index)
        batch.mask = batch.mask.index_select(0, index)
    batch.rows = [batch.rows[b] for b in keep]


def _merge(pool: _Batch | None, batch: _Batch) -> _Batch | None:
    """One batch of both's unfinished rows: the narrower cache and mask are padded on the left
    with masked-out columns (positions are per row, so a row's columns may move)."""
    if pool is None or not pool.rows:
        return batch if batch.rows else None
    if not batch.rows:
        return pool
    width = max(pool.mask.shape[1], batch.mask.shape[1])

    def widen(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
        missing = width - t.shape[-dim_from_end]
        return torch.nn.functional.pad(t, (0, 0) * (dim_from_end - 1) + (missing, 0)) if missing else t

    for mine, theirs in zip(pool.cache.layers, batch.cache.layers, strict=True):
        mine.keys = torch.cat([widen(mine.keys, 2), widen(theirs.keys, 2)])
        mine.values = torch.cat([widen(mine.values, 2), widen(theirs.values, 2)])
    return _Batch(pool.rows + batch.rows, pool.cache, torch.cat([widen(pool.mask, 1), widen(batch.mask, 1)]))


def _shared_prefix(prompts: Sequence[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving every prompt at least one token."""
    shared = min(len(p) for p in prompts) - 1
    for prompt in prompts[1:]:
        shared = next((i for i in range(shared) if prompt[i] != prompts[0][i]), shared)
    return max(shared, 0)


@dataclass(frozen=True)
class _Choices:
    best: list[list[int]]  # per position: the model's best tokens, best first
    logits: torch.Tensor  # per position: all scores, for a constrained choice outside `best`


def _choices(head: torch.nn.Module, hidden: torch.Tensor, counts: list[int], k: int) -> list[_Choices]:
    """The model's `k` best tokens, best first, after each of the last `counts[b]` positions of
    row b (feeds are right-aligned: the last pending token, then the draft). Only those positions
    go through the output head: over a padded rectangle it would cost as much as the rest of the pass."""
    width = hidden.shape[1]
    rows = torch.cat([torch.full((n,), b) for b, n in enumerate(counts)])
    cols = torch.cat([torch.arange(width - n, width) for n in counts])
    logits = head(hidden[rows.to(hidden.device), cols.to(hidden.device)])
    flat = logits.argmax(dim=-1, keepdim=True) if k == 1 else logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    flat = flat.tolist()
    out, start = [], 0
    for n in counts:
        out.append(_Choices(flat[start : start + n], logits[start : start + n]))
        start += n
    return out


def _propose(row: Row) -> list[int]:
    """The draft tokens to verify next: the whole draft at first, then a resynchronised piece of
    it, else the row's redraft."""
    if not row.generated:
        return row.draft
    # Find the generated tail in the draft, nearest the cursor, longest match first: after the
    # model wrote `amount_out` where the draft said `amount`, "=5k; chain=bsc" may still follow.
    for n in (3, 2, 1):
        if len(row.generated) < n:
            continue
        tail = row.generated[-n:]
        starts = [i for i in range(len(row.draft) - n + 1) if row.draft[i : i + n] == tail]
        if starts:
            start = min(starts, key=lambda i: (i + n < row.cursor, abs(i + n - row.cursor)))
            row.cursor = start + n
            return row.draft[row.cursor : row.cursor + RESYNC_LOOKAHEAD]
    return row.redraft(row.generated)[:RESYNC_LOOKAHEAD] if row.redraft else []


def _feed(active: list[Row], proposals: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Right-aligned (left-padded) input ids, their attention mask and per-row position ids."""
    batch = collate_for_generation([row.pending + p for row, p in zip(active, proposals, strict=True)], pad_id)
    mask = batch["attention_mask"]
    seen = torch.tensor([row.seen for row in active])[:, None]
    positions = (seen + mask.cumsum(dim=1) - 1) * mask
    return batch["input_ids"].to(device), mask.to(device), positions.to(device)


def _accept(row: Row, proposal: list[int], choices: _Choices, eos_id: int, max_new_tokens: int) -> int:
    """Keep the agreed prefix of `proposal` and the model's next token; return how many fed
    draft tokens were rejected (their cache entries must be masked out)."""

    def choice_after(agreed: int) -> int:
        if row.picker is None:
            return choices.best[agreed][0]
        draft = proposal[agreed] if agreed < len(proposal) else None
        scores = choices.logits[agreed]  # a difference of logits is one of log-probabilities
        return row.picker.pick(row.generated + proposal[:agreed], choices.best[agreed], scores, draft=draft)

    agreed = 0
    choice = choice_after(0)
    while agreed < len(proposal) and choice == proposal[agreed] and choice != eos_id:
        agreed += 1
        choice = choice_after(agreed)
    row.seen += len(row.pending) + agreed
    row.cursor += agreed
    for token in [*proposal[:agreed], choice]:
        if token == eos_id:
            row.done = True
            break
        row.generated.append(token)
        if len(row.generated) >= max_new_tokens:
            row.done = True
            break
    row.pending = [choice]
    return len(proposal) - agreed
