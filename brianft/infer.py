"""Generation and the path from raw model text to canonical intents."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from brianft.constrain import COVERAGE_NATS, DRAFT_TIEBREAK_NATS, ConstrainedPicker, OutputGrammar, grammar_processor
from brianft.cpus import cpu_has_native_bf16
from brianft.drafting import DraftVerifyDecoder, PrefixCache, Row
from brianft.normalize import Canonicalizer
from brianft.prompting import collate_for_generation, encode_prompt, encode_target
from brianft.schema import Intent
from brianft.target import NO_INTENT, parse_output


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


@dataclass(frozen=True)
class Generated:
    text: str
    notes: list[str] = field(default_factory=list)  # where constrained decoding refused the model's choice
    cut: bool = False  # stopped at max_new_tokens before the model ended its output


def cut_output_error(max_new_tokens: int) -> str:
    """Why an output stopped at the token limit is an error, never a plan: it may lack intents or fields."""
    return (
        f"the model's output reached the limit of {max_new_tokens} new tokens before it ended, so it may be "
        "incomplete; raise max_new_tokens (train.max_new_tokens in the run's config)"
    )


def decode_generated(generated: Generated, canonicalizer: Canonicalizer, max_new_tokens: int) -> Prediction:
    """`decode_prediction` of a generation, or an error where the token limit cut it."""
    if generated.cut:
        return Prediction(text=generated.text, error=cut_output_error(max_new_tokens))
    return decode_prediction(generated.text, canonicalizer)


def generate_texts(model, tokenizer, requests: Sequence[str], **options) -> list[str]:
    """The output text of each request: `generate` without the notes."""
    return [out.text for out in generate(model, tokenizer, requests, **options)]


def generate(
    model,
    tokenizer,
    requests: Sequence[str],
    *,
    is_seq2seq: bool,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    drafts: Sequence[str] | None = None,
    grammars: Sequence[OutputGrammar] | None = None,
    few_shot: bool = False,
    draft_tiebreak: float = DRAFT_TIEBREAK_NATS,
    prefix: PrefixCache | None = None,
) -> list[Generated]:
    """Greedy generation, batched, in the order of `requests`.

    `drafts` (one guess of the output text per request, e.g. the rule-based extractor's) only
    make decoder-only models faster: see `brianft.drafting`; the text is the model's either way.
    `grammars` (one per request) constrain the output to valid intents with values from the
    request (`brianft.constrain`); under them, a drafted token at most `draft_tiebreak` nats less
    likely than the model's choice is written instead (0: the output is the model's, whatever the draft).
    `few_shot` prompts with worked examples instead of the fine-tuning prompt (zero-shot baseline).
    A peft model's LoRA weights are merged into the base for the duration: one matmul per
    layer instead of three is most of the cost of a small model's decoding step on a CPU.
    `prefix` keeps the prompts' shared opening computed across calls (same model and weights only).
    """
    _check_per_request(requests, drafts=drafts, grammars=grammars)
    was_training = model.training
    model.eval()
    try:
        with merged_lora(model):
            stream = (
                None if is_seq2seq else GenerationStream.for_model(model, tokenizer, batch_size, max_new_tokens, prefix)
            )
            if stream is not None:
                handles = stream.add(
                    requests, drafts=drafts, grammars=grammars, few_shot=few_shot, draft_tiebreak=draft_tiebreak
                )
                stream.finish()
                return [handle.result() for handle in handles]
            pickers = _pickers(tokenizer, grammars, draft_tiebreak)
            prompts = [encode_prompt(tokenizer, request, is_seq2seq, few_shot=few_shot) for request in requests]
            outputs = _hf_generate(model, tokenizer, prompts, batch_size, max_new_tokens, pickers)
            if not pickers:
                return outputs
            return [replace(out, notes=list(p.overrides)) for out, p in zip(outputs, pickers, strict=True)]
    finally:
        model.train(was_training)


def _check_per_request(requests: Sequence[str], **per_request: Sequence | None) -> None:
    for name, given in per_request.items():
        if given is not None and len(given) != len(requests):
            raise ValueError(f"{len(given)} {name} for {len(requests)} requests")


def _pickers(
    tokenizer,
    grammars: Sequence[OutputGrammar] | None,
    draft_tiebreak: float,
    drafts: Sequence[str] | None = None,
) -> list[ConstrainedPicker] | None:
    if not grammars:
        return None
    drafts = drafts or [""] * len(grammars)
    # no draft tiebreak (the model alone: zero-shot, validation during training): no coverage nudge either
    coverage = COVERAGE_NATS if draft_tiebreak > 0 else 0.0
    return [
        ConstrainedPicker(
            tokenizer, grammar, tokenizer.eos_token_id, 0.0 if _reads_nothing(draft) else draft_tiebreak, coverage
        )
        for grammar, draft in zip(grammars, drafts, strict=True)
    ]


def _reads_nothing(draft: str) -> bool:
    """The rules draft "none" both for a request that asks for nothing and for one they cannot
    read; only the model can tell the two apart, so such a draft may speed it up but never
    overrules it (docs/BENCHMARKS.md, "Written requests and the dev set")."""
    return draft.strip().lower() == NO_INTENT


@dataclass(frozen=True)
class GenerationHandle:
    """One request inside a `GenerationStream`: its output is final once `done`."""

    row: Row
    tokenizer: object

    @property
    def done(self) -> bool:
        return self.row.done

    def result(self) -> Generated:
        text = self.tokenizer.decode(self.row.generated, skip_special_tokens=True).strip()
        return Generated(text, list(self.row.picker.overrides) if self.row.picker else [], cut=self.row.cut)


class GenerationStream:
    """Greedy draft-and-verify generation that admits new requests while earlier ones are still
    decoding (continuous batching). `add` runs one pass over the new requests (batches of at
    most `max_rows`; packed, or cut by length where the model cannot pack); the rows it leaves
    unfinished join a pool that `step` advances by one pass. A request whose draft was right is
    done after `add`, without waiting for anyone's tail: that is what a server gains over
    running one batch to its end.

    For decoder-only models whose body and head can be separated (`for_model` returns None
    otherwise), with LoRA already merged (`prepare_for_inference`, or `merged_lora`).
    """

    def __init__(self, decoder: DraftVerifyDecoder, tokenizer, max_rows: int) -> None:
        self.decoder, self.tokenizer, self.max_rows = decoder, tokenizer, max_rows

    @classmethod
    def for_model(
        cls, model, tokenizer, max_rows: int, max_new_tokens: int, prefix: PrefixCache | None = None
    ) -> GenerationStream | None:
        if (body_and_head := _body_and_head(model)) is None:  # encoder-decoder, or no separable head
            return None
        body, head = body_and_head
        decoder = DraftVerifyDecoder(
            body,
            head,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            max_new_tokens=max_new_tokens,
            max_rows=max_rows,
            prefix=prefix,
        )
        return cls(decoder, tokenizer, max_rows)

    @property
    def busy(self) -> bool:
        return self.decoder.busy

    def add(
        self,
        requests: Sequence[str],
        *,
        drafts: Sequence[str] | None = None,
        grammars: Sequence[OutputGrammar] | None = None,
        few_shot: bool = False,
        draft_tiebreak: float = DRAFT_TIEBREAK_NATS,
    ) -> list[GenerationHandle]:
        """Admit `requests` (arguments as in `generate`); one handle each, in order."""
        _check_per_request(requests, drafts=drafts, grammars=grammars)
        tokenizer = self.tokenizer
        pickers = _pickers(tokenizer, grammars, draft_tiebreak, drafts) or [None] * len(requests)
        prompts = [encode_prompt(tokenizer, request, False, few_shot=few_shot) for request in requests]
        draft_ids = [_encode_draft(tokenizer, text) for text in drafts] if drafts else [[] for _ in requests]
        redrafts = [TextRedraft(tokenizer, d, r) for d, r in zip(drafts, requests, strict=True)] if drafts else None
        rows = [
            Row(pending=prompt, draft=draft, redraft=redrafts[i] if redrafts else None, picker=pickers[i])
            for i, (prompt, draft) in enumerate(zip(prompts, draft_ids, strict=True))
        ]
        # a packed first pass wastes little on unequal lengths: batches need no cutting by length
        chunks = (
            [range(i, min(i + self.max_rows, len(rows))) for i in range(0, len(rows), self.max_rows)]
            if self.decoder.packs
            else _chunks(prompts, self.max_rows, draft_ids)
        )
        for chunk in chunks:
            self.decoder.start([rows[i] for i in chunk])
        return [GenerationHandle(row, tokenizer) for row in rows]

    def step(self) -> None:
        """One pass for every unfinished request."""
        self.decoder.advance()

    def finish(self) -> None:
        self.decoder.finish()


def prepare_for_inference(model, dtype: str = "auto"):
    """The model to serve: LoRA merged into the base for good (a plain transformers model), in
    `dtype`. "auto" is bfloat16 where the hardware computes it natively (a CUDA GPU that supports
    it; a CPU with AVX512-BF16 or AMX), float32 elsewhere: reading half the bytes per weight is
    what makes a small model's decoding step faster (docs/BENCHMARKS.md)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.eval()
    return model.to(inference_dtype(dtype, next(model.parameters()).device))


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if name != "auto":
        raise ValueError(f"unknown inference dtype {name!r}: use auto, float32 or bfloat16")
    return torch.bfloat16 if native_bf16(device) else torch.float32


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU that supports it, a CPU with
    AVX512-BF16 or AMX. Elsewhere torch emulates it, many times slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


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


def _encode_draft(tokenizer, text: str) -> list[int]:
    return encode_target(tokenizer, text) if text else []


def _body_and_head(model):
    from brianft.model import ModelLoadError, backbone_and_head

    try:
        return backbone_and_head(model)
    except ModelLoadError:
        return None


MAX_PADDING = 0.25  # of a batch's tokens


def _chunks(prompts: list[list[int]], batch_size: int, drafts: list[list[int]] | None = None) -> Iterator[list[int]]:
    """Indices of `prompts` in batches of similar length (prompt plus draft: what the first pass
    feeds): at most `batch_size` rows, and a new batch starts before padding would exceed a
    quarter of it, so the long tail (multi-intent requests) does not pad a whole batch. Callers
    put results back in order by index."""
    length = [len(p) + (len(drafts[i]) if drafts else 0) for i, p in enumerate(prompts)]
    chunk: list[int] = []
    total = 0
    for i in sorted(range(len(prompts)), key=length.__getitem__):
        padded = length[i] * (len(chunk) + 1)  # sorted: the newest row is the widest
        if chunk and (len(chunk) == batch_size or padded > (1 + MAX_PADDING) * (total + length[i])):
            yield chunk
            chunk, total = [], 0
        chunk.append(i)
        total += length[i]
    if chunk:
        yield chunk


class TextRedraft:
    """A guess of what follows the generated text, at the level of text, not tokens: the model
    may split the same text into other tokens than the tokenizer does (an address, a ticker), or
    write another action than the draft, and token-level lining up then finds nothing.

    The guess: the rest of the draft after the longest end of the generated text that the draft
    contains ("unst" + "ake" still continues the draft "stake; token1=..."); else, inside a value,
    the rest of the request's words that the value has started to copy.
    """

    MIN_OVERLAP = 3  # characters
    COPY_WORDS = 3

    def __init__(self, tokenizer, draft: str, request: str) -> None:
        self.tokenizer, self.draft, self.request = tokenizer, draft, request
        self._low_request = request.lower()

    def __call__(self, generated: list[int]) -> list[int]:
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        rest = self._draft_rest(text) or self._copy_rest(text)
        return self.tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else []

    def _draft_rest(self, text: str) -> str:
        for size in range(min(len(text), 40), self.MIN_OVERLAP - 1, -1):
            ends = [m.start() + size for m in re.finditer(re.escape(text[-size:]), self.draft)]
            if ends := [end for end in ends if end < len(self.draft)]:
                return self.draft[min(ends, key=lambda end: abs(end - len(text))) :]  # nearest where the text is
        return ""

    def _copy_rest(self, text: str) -> str:
        value = re.split(r"[=|\n]", text)[-1]
        if not value.strip():
            return ""
        for match in re.finditer(re.escape(value.lower()), self._low_request):
            if match.start() == 0 or not self._low_request[match.start() - 1].isalnum():
                end = match.end()
                words = re.match(rf"\S*(?:\s+\S+){{0,{self.COPY_WORDS - 1}}}", self.request[end:])
                return words.group(0) if words else ""
        return ""


@torch.inference_mode()
def _hf_generate(model, tokenizer, prompts, batch_size, max_new_tokens, pickers=None) -> list[Generated]:
    """transformers' own greedy generate: encoder-decoder models, and any model whose decoder
    body and head cannot be separated."""
    outputs: list[Generated] = [Generated("")] * len(prompts)
    device = next(model.parameters()).device
    for chunk in _chunks(prompts, batch_size):
        batch = {
            k: v.to(device)
            for k, v in collate_for_generation([prompts[i] for i in chunk], tokenizer.pad_token_id).items()
        }
        # encoder-decoder outputs start with the decoder's start token; decoder-only after the prompt
        start = 1 if model.config.is_encoder_decoder else batch["input_ids"].shape[1]
        constrained = [pickers[i] for i in chunk] if pickers else None
        generated = model.generate(
            **batch,
            logits_processor=grammar_processor(constrained, start, tokenizer.eos_token_id),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, start:]
        for row, index in enumerate(chunk):
            text = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
            cut = tokenizer.eos_token_id not in new_tokens[row].tolist()  # stopped by max_new_tokens
            outputs[index] = Generated(text, cut=cut)
    return outputs
