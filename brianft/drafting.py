"""Greedy decoding that checks drafted tokens in bulk (draft-and-verify).

Why: on a CPU, one forward pass of a small model costs about the same for one new token as for
a dozen, because reading the weights dominates; and an intent line mostly repeats a cheap guess
of it (the rule-based extractor's output, `brianft.rules`). So each step feeds the model the
tokens it has not seen yet plus a *draft* of the next ones, and keeps every drafted token the
model's own argmax agrees with, plus the model's token at the first disagreement.

The result is the model's greedy output, whatever the draft: a drafted token survives only where
greedy decoding would have produced it (up to float rounding between a one-token and a
many-token forward pass). A wrong draft costs time, never correctness. One deliberate exception,
under constrained decoding only: a drafted token that the model finds nearly as likely as its
own choice is written instead (`ConstrainedPicker.draft_tiebreak`).

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
# Tokens per packed row of a first pass: attention within a packed row costs its length squared,
# the rest of the pass only its tokens; ~3 requests of ~45 tokens each.
PACKED_ROW_TOKENS = 128


@dataclass
class Row:
    pending: list[int]  # tokens the cache has not seen yet: the prompt, then the last generated token
    draft: list[int]
    redraft: Callable[[list[int]], list[int]] | None = None  # a fresh guess of what follows `generated`
    generated: list[int] = field(default_factory=list)
    seen: int = 0  # tokens in the cache that count (the next position id)
    cursor: int = 0  # where in the draft the generated text currently is
    done: bool = False
    cut: bool = False  # done because it reached max_new_tokens, not because the model ended it
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
    pack: bool = True,
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
    computed only where a token is chosen, never over the prompt. `pack`: see `DraftVerifyDecoder`.
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
        pack=pack,
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
        pack: bool = True,
    ) -> None:
        self.body, self.head = body, head
        # packing needs a custom 4D attention mask, which transformers' eager and SDPA attention take
        self.packs = pack and getattr(getattr(body, "config", None), "_attn_implementation", None) in ("eager", "sdpa")
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
        if self.packs:
            batch = _packed_first_pass(
                self.body, self.head, rows, self.prefix, self.device, top_k=_top_k(rows),
                eos_id=self.eos_id, pad_id=self.pad_id, max_new_tokens=self.max_new_tokens,
            )  # fmt: skip
        else:
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
            top_k=_top_k(batch.rows),
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            max_new_tokens=self.max_new_tokens,
        )


def _top_k(rows: list[Row]) -> int:
    return TOP_K if any(row.picker for row in rows) else 1  # a picker may refuse the best


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

    def sync(self, body: torch.nn.Module, prompts: Sequence[list[int]], device) -> int:
        """Make the cache hold the longest prefix of the cached one that `prompts` all share
        (computing it if there is none yet); return its length."""
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
        return agreed

    def copies(self, rows: int) -> DynamicCache:
        cache = DynamicCache()
        if self.ids:
            for index, (keys, values) in enumerate(self.layers):
                cache.update(keys.repeat(rows, 1, 1, 1), values.repeat(rows, 1, 1, 1), index)
        return cache

    def _compute(self, body: torch.nn.Module, ids: list[int], device) -> None:
        cache = DynamicCache()
        positions = torch.arange(len(ids), device=device)[None]
        body(input_ids=torch.tensor([ids], device=device), position_ids=positions, cache=cache, use_cache=True)
        self.ids, self.layers = list(ids), [(layer.keys, layer.values) for layer in cache.layers]


def _take_prefix(body: torch.nn.Module, rows: list[Row], device, prefix: PrefixCache) -> int:
    """Bring `prefix` to the opening that the fresh rows' prompts share and take it off what
    each row has still to feed; return its length."""
    shared = prefix.sync(body, [row.pending for row in rows], device)
    for row in rows:
        row.pending, row.seen = row.pending[shared:], shared
    return shared


def _start(body: torch.nn.Module, rows: list[Row], device, prefix: PrefixCache) -> _Batch:
    """A batch of fresh rows (`pending` = the whole prompt), with the prefix their prompts share
    already in its cache: computed once per `prefix` cache, then copied to every row."""
    shared = _take_prefix(body, rows, device, prefix)
    return _Batch(rows, prefix.copies(len(rows)), torch.ones((len(rows), shared), dtype=torch.long, device=device))


def _packed_first_pass(
    body,
    head,
    rows: list[Row],
    prefix: PrefixCache,
    device,
    *,
    top_k: int,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
) -> _Batch:
    """The first pass of fresh rows with their prompts and drafts packed end to end into rows of
    about `PACKED_ROW_TOKENS` tokens (a block-diagonal mask keeps each request to its own tokens
    and the shared prefix), instead of a padded rectangle; the rows left unfinished come back in
    the usual layout (one row each, left-padded) to decode on. Why: the first pass is most of
    the cost of a batch on a CPU, and padding requests of unequal length to a rectangle spent a
    fifth of it on padding; cutting batches by length instead cost more passes."""
    shared = _take_prefix(body, rows, device, prefix)
    proposals = [_propose(row) for row in rows]
    feeds = [row.pending + proposal for row, proposal in zip(rows, proposals, strict=True)]
    lengths = [len(feed) for feed in feeds]
    packs = _tightest_packing(lengths)
    width = max(sum(lengths[i] for i in pack) for pack in packs)
    ids = torch.full((len(packs), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(packs), width), dtype=torch.long)
    segment = torch.empty((len(packs), width), dtype=torch.long)
    start = [0] * len(rows)  # where each request's tokens begin in its packed row
    where = [0] * len(rows)
    for p, pack in enumerate(packs):
        column = 0
        for i in pack:
            n = lengths[i]
            ids[p, column : column + n] = torch.tensor(feeds[i])
            positions[p, column : column + n] = torch.arange(shared, shared + n)
            segment[p, column : column + n] = i
            where[i], start[i] = p, column
            column += n
        segment[p, column:] = len(rows) + p  # padding attends to itself only: no empty softmax row
    visible = (segment[:, :, None] == segment[:, None, :]) & torch.ones(width, width, dtype=torch.bool).tril()
    visible = torch.cat([torch.ones(len(packs), width, shared, dtype=torch.bool), visible], dim=2)[:, None]
    cache = prefix.copies(len(packs))
    hidden = body(
        input_ids=ids.to(device),
        attention_mask=_attention_mask(body, visible.to(device)),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    counts = [len(proposal) + 1 for proposal in proposals]
    choices = _choices_at(
        head,
        hidden,
        torch.cat([torch.full((n,), where[i]) for i, n in enumerate(counts)]),
        torch.cat([torch.arange(start[i] + lengths[i] - n, start[i] + lengths[i]) for i, n in enumerate(counts)]),
        counts,
        top_k,
    )
    rejected = [
        _accept(row, proposal, choice, eos_id, max_new_tokens)
        for row, proposal, choice in zip(rows, proposals, choices, strict=True)
    ]
    keep = [i for i, row in enumerate(rows) if not row.done]
    spans = [(where[i], start[i], lengths[i], rejected[i]) for i in keep]
    return _unpack(cache, [rows[i] for i in keep], spans, shared)


def _unpack(cache: DynamicCache, rows: list[Row], spans: list[tuple[int, int, int, int]], shared: int) -> _Batch:
    """The packed cache's columns of each row (prefix, then its own tokens, left-padded to a
    common width) and the mask that hides padding and rejected draft tokens."""
    if not rows:
        return _Batch([], cache, torch.zeros((0, 0), dtype=torch.long))
    width = shared + max(length for _, _, length, _ in spans)
    device = cache.layers[0].keys.device
    pack_of = torch.empty((len(rows), width), dtype=torch.long)
    column_of = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (pack, start, length, rejected) in enumerate(spans):
        pack_of[r] = pack
        column_of[r, :shared] = torch.arange(shared)
        column_of[r, width - length :] = torch.arange(shared + start, shared + start + length)
        mask[r, :shared] = 1
        mask[r, width - length : width - rejected] = 1
    pack_of, column_of = pack_of.to(device), column_of.to(device)
    out = DynamicCache()
    for index, layer in enumerate(cache.layers):
        # [packs, heads, columns, dim] indexed by (pack, column) pairs -> [rows, width, heads, dim]
        keys = layer.keys[pack_of, :, column_of].permute(0, 2, 1, 3).contiguous()
        values = layer.values[pack_of, :, column_of].permute(0, 2, 1, 3).contiguous()
        out.update(keys, values, index)
    return _Batch(rows, out, mask.to(device))


def _tightest_packing(lengths: list[int]) -> list[list[int]]:
    """The packing with the fewest token slots (rows x widest row) over row capacities from the
    longest request up to `PACKED_ROW_TOKENS` (or the longest, if longer); one request a row,
    the padded rectangle, is among them."""
    longest = max(lengths)
    packings = (_pack(lengths, capacity) for capacity in range(longest, max(longest, PACKED_ROW_TOKENS) + 1, 4))
    return min(packings, key=lambda packs: len(packs) * max(sum(lengths[i] for i in pack) for pack in packs))


def _pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped so that each group's lengths sum to <= capacity."""
    packs: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((p for p, free in enumerate(room) if lengths[i] <= free), None)
        if fit is None:
            packs.append([])
            room.append(capacity)
            fit = len(packs) - 1
        packs[fit].append(i)
        room[fit] -= lengths[i]
    return packs


def _attention_mask(body, visible: torch.Tensor) -> torch.Tensor:
    """A 4D boolean mask (True: may attend) as the body's attention implementation takes it:
    SDPA takes booleans, eager attention adds the mask to its scores."""
    if body.config._attn_implementation == "eager":
        dtype = next(body.parameters()).dtype
        return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(
            ~visible, torch.finfo(dtype).min
        )
    return visible


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
    return _choices_at(head, hidden, rows, cols, counts, k)


def _choices_at(
    head: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, counts: list[int], k: int
) -> list[_Choices]:
    """As `_choices`, at explicit (row, column) positions: `counts[b]` of them for request b."""
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
            row.done = row.cut = True
            break
    row.pending = [choice]
    return len(proposal) - agreed
