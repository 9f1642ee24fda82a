"""Constrained decoding: the model may only write what the target format can hold, with every
value taken from the request.

Why: a fine-tuned 135M model mostly gets a request right, and when it goes wrong it is often by
writing something the request does not contain: half an ENS name (`wr.eth` for `dwr.eth`), a
word glued to the next (`plaineth`), an action word as a chain (`chain=unwrap`), a field twice.
Such outputs are never right, so decoding excludes them: at each step the model's best token is
taken only if the output text stays a prefix of some valid output, else its next best, and so on.

A valid output (`brianft.target`) is `none`, or one line per intent: an action, then
`; field=value` pairs in schema order, each field allowed for the action and written once (or,
in the `slots` format, `|value` slots for the action's fields, trailing empty ones left out). Each
value is a span of the request (between word boundaries, written as the request writes it) that canonicalises as
its field: a token, an amount, an address; for chain, dest_chain and protocol a name the registry
knows. So a chain or protocol the registry does not know cannot be extracted: the field is left
out, and the caller is told (`ConstrainedPicker.overrides`), never handed an invented value.

The check is on decoded text, so it works with any tokenizer, and it only runs on the few
candidates greedy decoding looks at (the model's top `TOP_K`), not on the whole vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from functools import cached_property

from brianft.data.spans import WORD, SpanFinder, WordRun, word_runs, word_spans
from brianft.schema import ALLOWED_FIELDS, FIELDS, Action
from brianft.target import FIELD_SEPARATOR, NO_INTENT, SLOT_FIELDS, SLOT_SEPARATOR, TargetFormat, parse_output

TOP_K = 32
# How much less likely (in nats) than the model's choice a drafted token may be and still be
# written. On requests whose sentence structure training never saw, the model's wrong action,
# field or intent count was mostly a close second to the right one, and the rule-based draft
# had the right one ("lend" -> deposit, "weth -> eth" -> unwrap, "over to scroll" -> dest_chain,
# a second intent after "and"). Chosen on the fresh hand-written requests, which neither the
# model nor the rules were fitted to: 4 and 8 tie there, ahead of 2 and of "always the draft";
# the validation split, in-sample for the rules, would trust them further (docs/BENCHMARKS.md).
# The grammar still holds, so a drafted value is a span of the request like the model's.
DRAFT_TIEBREAK_NATS = 4.0
# How much more likely than a new intent line the end of the output may be and still give way to
# it, while the request names an amount (in digits), address or protocol that no intent uses:
# "on base send 0.1 eth to 0x55... and 50 usdc to carol.eth" ended after the first transfer at
# 0.41 nats. Of 768 right outputs on validation, dev, dev2 and fresh, 9 leave such a value
# unused, the closest to a tie at 2.2 nats. At 1.5, one output of the 952 dev, dev2, fresh and
# test requests changed: that one (docs/BENCHMARKS.md, "Coverage of the request").
COVERAGE_NATS = 1.5
MAX_VALUE_WORDS = 6
_ACTIONS = tuple(a.value for a in Action)
_FIELD_ORDER = {name: index for index, name in enumerate(FIELDS)}
# Fields whose values are read exactly like an earlier field's (FIELDS order): built once.
_SAME_VALUES = {"token2": "token1", "amount_out": "amount", "dest_chain": "chain"}
# A value starts and ends at a word's edge, or where a number meets the word glued to it ("49ether"),
# but never inside a hex address: the "0" of "0xd88e..." is no amount; an arrow is a word ("ETH→WETH").
_PIECE = re.compile(r"(?!0[xX][0-9a-fA-F])\d[\d.,]*(?=[^\W\d_])|" + WORD.pattern)
_SALIENT_FIELDS = ("amount", "address", "protocol")
# Words after which a name that is both a token and a chain ("eth", "matic") is the token.
_TOKEN_CUES = frozenset({"my", "of", "for", "plain", "the", "some", "your", "our", "all", "more", "much"})
# Words that ask for the same intent more than once ("25 DAI to mike.eth x2 (two separate txs)").
# Without one, an output repeats no intent line: a repeated line was a decoding loop (the same
# bridge to base over and over for "bridge 0.2 eth to base and 0.2 eth to optimism").
_REPEAT_CUE = re.compile(
    r"\b(?:x\s*\d+|\d+\s*x|twice|thrice|again|repeat\w*|(?:\d+|two|three|four|five|several|multiple)\s+times)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class OutputGrammar:
    """The outputs allowed for one request: `values[field]` maps each allowed value, exactly as
    the request writes it, to its canonical value."""

    values: dict[str, dict[str, str]]
    fmt: TargetFormat = "fields"
    # (field, text, canonical) of each amount written in digits, address and protocol the request
    # names: an output that uses none of one has probably left an intent out
    salient: tuple[tuple[str, str, str], ...] = ()
    repeats: bool = True  # whether an intent line may occur twice (the request asks for a repeat)
    _new_line_memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def for_request(cls, request: str, spans: SpanFinder, fmt: TargetFormat = "fields") -> OutputGrammar:
        from brianft.rules import NOT_TOKEN_WORDS  # here: the rules module imports the decoder

        cuts = _word_cuts(request, spans)
        candidates = [c for c in _value_candidates(request) if c.start not in cuts and c.end not in cuts]
        names = _known_names(candidates, spans)
        values: dict[str, dict[str, str]] = {}
        for name in FIELDS:
            if name in _SAME_VALUES:
                values[name] = values[_SAME_VALUES[name]]
                continue
            allowed: dict[str, str] = {}
            for candidate in candidates:
                text = candidate.text
                canonical = spans.known_canonical(name, text)  # chains and protocols: only known ones
                if canonical is None:
                    continue
                # an unknown ticker is one word, not an amount ("10", "half"), not a word that frames
                # values, not an address or ENS name, not a word of a known name ("rocket" of "rocket pool")
                if (
                    name.startswith("token")
                    and not spans.is_known_token(text)
                    and (
                        " " in text
                        or text.lower() in NOT_TOKEN_WORDS
                        or spans.canonical("amount", text) is not None
                        or spans.canonical("address", text) is not None
                        or any(start <= candidate.start and candidate.end <= end for start, end in names)
                    )
                ):
                    continue
                if name.endswith("chain") and spans.is_known_token(text) and _introduces_token(candidate.before, spans):
                    continue  # "eth" is a chain in "on eth", a token in "half my eth" or "1 eth"
                if name.startswith("token") and candidate.before == "on" and spans.known_canonical("chain", text):
                    continue  # ... and "on avalanche" names the chain, not the token
                allowed.setdefault(text, canonical)
            values[name] = allowed
        salient = tuple(
            (name, text, canonical)
            for name in _SALIENT_FIELDS
            for text, canonical in values[name].items()
            if (name != "amount" or any(c.isdigit() for c in text))
            and (name != "address" or spans.known_canonical("protocol", text) is None)  # "ether.fi" is a protocol
        )
        return cls(values, fmt, salient, repeats=bool(_REPEAT_CUE.search(request)))

    def unused(self, text: str) -> list[str]:
        """The salient values of the request (amounts in digits, addresses, protocols) that output
        `text` uses nowhere: neither the same value in a field of its kind, nor inside any value
        written ("5" in "5 k"; "aave" as a token)."""
        intents = parse_output(text).intents
        written = [(name, str(value)) for intent in intents for name, value in intent.items() if name != "action"]
        texts = [value.lower() for _, value in written]
        # amount_out reads values as amount does (_SAME_VALUES): an amount used as either counts
        canonical = {(_SAME_VALUES.get(name, name), self.values.get(name, {}).get(value)) for name, value in written}
        return [
            text
            for name, text, value in self.salient
            if (name, value) not in canonical and not any(text.lower() in written_text for written_text in texts)
        ]

    @cached_property
    def has_non_ascii(self) -> bool:
        return any(not text.isascii() for allowed in self.values.values() for text in allowed)

    def phrases(self) -> list[str]:
        """Everything an output is made of, as written: to find tokens that can continue it."""
        words = [*_ACTIONS, NO_INTENT, *(f"{name}=" for name in FIELDS), FIELD_SEPARATOR, SLOT_SEPARATOR, "\n"]
        return words + [text for allowed in self.values.values() for text in allowed]

    def allows_prefix(self, text: str) -> bool:
        return self._status(text) is not None

    def allows_end(self, text: str) -> bool:
        return self._status(text) is True

    def _status(self, text: str) -> bool | None:
        """None: no valid output starts with `text`; else whether `text` is a whole valid output."""
        text = text.lstrip()
        if not text or NO_INTENT.startswith(text):
            return text == NO_INTENT
        *done, last = text.split("\n")
        if any(self._line(line) is not True for line in done):
            return None
        earlier: frozenset[str] = frozenset()  # the lines so far, where none may be written again
        if not self.repeats and done:
            earlier = frozenset(line.strip().lower() for line in done)
            if len(earlier) < len(done):
                return None
        if last == "":
            return False
        status = self._line(last)
        if status is None or not earlier:
            return status
        if not self._leads_to_new_line(last, earlier):
            return None
        return False if status is True and last.strip().lower() in earlier else status

    def _leads_to_new_line(self, line: str, earlier: frozenset[str]) -> bool:
        """Whether the valid line prefix `line` can still end as a line unlike every `earlier` one
        (lower case): checked character by character only while it copies the start of one, so
        that decoding never enters a line that could only end as a repeat."""
        key = (line, earlier)
        if key not in self._new_line_memo:
            low = line.strip().lower()
            copying = any(other.startswith(low) for other in earlier)
            if not copying or (self._line(line) is True and low not in earlier):
                leads = True  # no longer a copy, or already a whole new line
            else:
                leads = any(
                    self._line(line + char) is not None and self._leads_to_new_line(line + char, earlier)
                    for char in self._line_characters
                )
            self._new_line_memo[key] = leads
        return self._new_line_memo[key]

    @cached_property
    def _line_characters(self) -> frozenset[str]:
        return frozenset(char for phrase in self.phrases() for char in phrase if char != "\n")

    def _line(self, line: str) -> bool | None:
        if self.fmt == "slots":
            return self._slot_line(line)
        action, separator, rest = line.partition(";")
        if not separator:
            return self._line_action(action)
        if action not in _ACTIONS:
            return None
        allowed = ALLOWED_FIELDS[Action(action)]
        previous = -1
        written: dict[str, str] = {}  # canonical values of the fields so far
        pairs = (";" + rest).split(FIELD_SEPARATOR.rstrip())[1:]
        for index, pair in enumerate(pairs):
            last = index == len(pairs) - 1
            if pair == "" and last:
                pair = " "  # "; " is half written: a field must still be possible
            if not pair.startswith(" "):
                return None
            name, equals, value = pair[1:].partition("=")
            if not equals:
                fits = any(
                    f.startswith(name) and _FIELD_ORDER[f] > previous and self._options(f, written) for f in allowed
                )
                return False if last and fits else None
            if name not in allowed or _FIELD_ORDER[name] <= previous:
                return None
            previous = _FIELD_ORDER[name]
            status = self._value(name, value, written)
            if last or status is not True:
                return status if last else None
            written[name] = self.values[name][value]
        return None  # pragma: no cover - the loop always returns

    def _slot_line(self, line: str) -> bool | None:
        action, separator, rest = line.partition(SLOT_SEPARATOR)
        if not separator:
            return self._line_action(action)
        if action not in _ACTIONS:
            return None
        names = SLOT_FIELDS[action]
        slots = rest.split(SLOT_SEPARATOR)
        if len(slots) > len(names):
            return None
        written: dict[str, str] = {}
        for index, value in enumerate(slots):
            name = names[index]
            if index < len(slots) - 1:
                if value and self._value(name, value, written) is not True:
                    return None
                if value:
                    written[name] = self.values[name][value]
                continue
            if not value:  # a slot was just opened: some field from here on must be possible
                return False if any(self._options(later, written) for later in names[index:]) else None
            return self._value(name, value, written)
        return None  # pragma: no cover - the loop always returns

    def _line_action(self, action: str) -> bool | None:
        if action in _ACTIONS:
            return True
        return False if any(a.startswith(action) for a in _ACTIONS) else None

    def _options(self, name: str, written: dict[str, str]) -> Collection[str]:
        """The values `name` may take after the fields `written` (canonical values): a swap's
        token2 is not its token1 ("sell 0.01 wbtc" has no token2), and a swap fixes what goes in
        or what comes out, never both (no label has amount and amount_out; the model wrote
        "2M PEPE → 0x..." as a swap with amount = amount_out = 2M)."""
        if name == "amount_out" and "amount" in written:
            return ()
        allowed = self.values[name]
        taken = written.get("token1") if name == "token2" else None
        if taken is None:
            return allowed  # the common case, on every check of every token: no copy
        return [text for text, canonical in allowed.items() if canonical != taken]

    def _value(self, name: str, value: str, written: dict[str, str]) -> bool | None:
        options = self._options(name, written)
        if value in options:
            return True
        return False if any(option.startswith(value) for option in options) else None


def _value_candidates(request: str) -> list[WordRun]:
    """Every run of up to MAX_VALUE_WORDS pieces of the request, edge punctuation trimmed, with
    the word before it, in order of appearance."""
    out = []
    for run in word_runs(request, MAX_VALUE_WORDS, _PIECE):
        out.append(run)
        if request[run.end : run.end + 1] == ".":  # "usdc." may end "usdc.e"; also keep the dot
            out.append(run._replace(end=run.end + 1, text=request[run.start : run.end + 1]))
    return out


def _word_cuts(request: str, spans: SpanFinder) -> set[int]:
    """Where a number meets the letters glued to it inside a word that is itself an amount
    ("15|k") or a name the registry lists ("1|inch"): no value starts or ends there. ("49|ether"
    is neither: "49" is a value.)"""
    cuts: set[int] = set()
    for start, end in word_spans(request):
        inner = [i for i in range(start + 1, end) if request[i - 1].isdigit() and request[i].isalpha()]
        word = request[start:end]
        if inner and (
            spans.canonical("amount", word) is not None or spans.is_registry_name(word) or spans.is_known_token(word)
        ):
            cuts.update(inner)
    return cuts


def _known_names(candidates: list[WordRun], spans: SpanFinder) -> list[tuple[int, int]]:
    """Where the request writes, in several words, a chain or protocol name the registry lists
    ("rocket pool", "binance smart chain"): none of their words is a ticker of its own."""
    return [(c.start, c.end) for c in candidates if " " in c.text and spans.is_registry_name(c.text)]


def _introduces_token(word: str, spans: SpanFinder) -> bool:
    """Whether a name after `word` is a token: after "my", "of"... or an amount ("1", "twenty")."""
    return word in _TOKEN_CUES or bool(word) and (word[0].isdigit() or spans.canonical("amount", word) is not None)


@dataclass
class ConstrainedPicker:
    """Greedy choice under an `OutputGrammar` for one request's output tokens."""

    tokenizer: object
    grammar: OutputGrammar
    eos_id: int
    draft_tiebreak: float = DRAFT_TIEBREAK_NATS  # 0: a draft never overrides the model
    coverage_nats: float = COVERAGE_NATS  # 0: the output ends where the model ends it
    overrides: list[str] = field(default_factory=list)  # where the model's own choice was refused
    gave_up: bool = False  # no candidate fitted: decoding went on unconstrained

    _vocabulary: set[int] | None = field(default=None, repr=False)

    def pick(self, generated: list[int], candidates: list[int], scores=None, draft: int | None = None) -> int:
        """The first of `candidates` (the model's best tokens, best first) that keeps the output
        valid; else, when the logits `scores` are given, the best-scored token that does among
        those the output can be made of. A `draft` token (the rule-based guess) at most
        `draft_tiebreak` nats less likely than that choice is taken instead, where it fits."""
        if self.gave_up:
            return candidates[0]
        text = self._text(generated)
        for token in candidates:
            if self._fits(text, generated, token):
                if token != candidates[0]:
                    self._note(text, candidates[0])
                token = self._go_on(text, generated, token, scores)
                return self._tiebreak(text, generated, token, draft, scores)
        if scores is not None:
            vocabulary = self._phrase_tokens() | self._continuation_tokens(text)
            ranked = sorted(vocabulary, key=lambda t: float(scores[t]), reverse=True)
            for token in ranked:
                if self._fits(text, generated, token):
                    self._note(text, candidates[0])
                    return token
        if not self.grammar.repeats:
            # every way on repeats an earlier intent line (the grammar looks ahead for that, but
            # assumes every valid start of a value can be finished): allow the repeat rather than
            # decode unchecked
            self.grammar = replace(self.grammar, repeats=True)
            return self.pick(generated, candidates, scores, draft)
        self.gave_up = True
        self.overrides.append(f"after {text.strip()[-40:]!r} no valid continuation was found; the output is unchecked")
        return candidates[0]

    def _go_on(self, text: str, generated: list[int], choice: int, scores) -> int:
        """A new intent line instead of the end of the output, where the model prefers ending by at
        most `coverage_nats` and the request names a value no intent uses yet."""
        if choice != self.eos_id or scores is None or self.coverage_nats <= 0 or not self.grammar.unused(text):
            return choice
        newline = self._ids("\n")
        if len(newline) != 1 or not self._fits(text, generated, newline[0]):
            return choice
        return newline[0] if float(scores[choice]) - float(scores[newline[0]]) <= self.coverage_nats else choice

    def _tiebreak(self, text: str, generated: list[int], choice: int, draft: int | None, scores) -> int:
        if draft is None or draft == choice or scores is None or self.draft_tiebreak <= 0:
            return choice
        if draft == self.eos_id and self.grammar.unused(text):
            # the draft would end the output where the model goes on, while the request names a value
            # no intent uses yet: the rules missed a step there ("... and use it to repay spark")
            return choice
        close = float(scores[choice]) - float(scores[draft]) <= self.draft_tiebreak
        return draft if close and self._fits(text, generated, draft) else choice

    def _fits(self, text: str, generated: list[int], token: int) -> bool:
        if token == self.eos_id:
            return self.grammar.allows_end(text)
        extended = self._text([*generated, token])
        whole = extended.rstrip("\ufffd")
        if len(extended) - len(whole) > 3 or (whole != extended and not self.grammar.has_non_ascii):
            return False  # at most one character's bytes may be pending, and only where one can be written
        return self.grammar.allows_prefix(whole)

    def _phrase_tokens(self) -> set[int]:
        """Every token of the grammar's phrases, tokenized alone and after a space, and EOS."""
        if self._vocabulary is None:
            ids = {self.eos_id}
            for phrase in self.grammar.phrases():
                for text in (phrase, " " + phrase):
                    ids.update(self._ids(text))
            self._vocabulary = ids
        return self._vocabulary

    def _continuation_tokens(self, text: str) -> set[int]:
        """The first token of the rest of every phrase that `text` ends partway through ("ma" of
        "mainnet" -> the first token of "innet"): a phrase's own tokens may not split there."""
        low = text.lower()
        ids = set()
        for phrase in self.grammar.phrases():
            for cut in range(1, len(phrase)):
                if low.endswith(phrase[:cut].lower()) and (rest := self._ids(phrase[cut:])):
                    ids.add(rest[0])
        return ids

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _note(self, text: str, preferred: int) -> None:
        wanted = "end of output" if preferred == self.eos_id else repr(self._text([preferred]).strip() or " ")
        self.overrides.append(
            f"after {text.strip()[-40:]!r} the model preferred {wanted}, which the request does not support"
        )


def grammar_processor(pickers: list[ConstrainedPicker] | None, start: int, eos_id: int):
    """`pickers` as a transformers logits processor for `generate` (greedy), or None. `start`:
    where the output begins in the ids `generate` passes (after the prompt, or the decoder's
    start token)."""
    if not pickers:
        return None
    from transformers import LogitsProcessor, LogitsProcessorList

    class _GrammarProcessor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            top = scores.topk(min(TOP_K, scores.shape[-1]), dim=-1).indices.tolist()
            for b, picker in enumerate(pickers):
                generated = input_ids[b, start:].tolist()
                if eos_id in generated:
                    continue  # finished; generate pads it
                choice = picker.pick(generated, top[b], scores[b])
                best = scores[b, choice].clone()
                scores[b] = float("-inf")
                scores[b, choice] = best
            return scores

    return LogitsProcessorList([_GrammarProcessor()])


def request_grammars(requests: list[str], spans: SpanFinder, fmt: TargetFormat = "fields") -> list[OutputGrammar]:
    return [OutputGrammar.for_request(request, spans, fmt) for request in requests]
