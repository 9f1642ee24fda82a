"""Find the text in a request that a canonical label value was written as.

The model is trained to copy values as written ("2.5k", "Arbitrum One", "ten") and leave
canonicalisation to code, so every labelled example needs those raw spans. The generator
records them by construction; for hand-labelled examples they are found here by trying
every short word n-gram of the request against the canonicaliser.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from brianft.normalize import Canonicalizer, NormalizationError
from brianft.schema import Example, Intent

MAX_SPAN_WORDS = 5
# A word; an arrow is a word of its own even when glued to its neighbours ("ETH→WETH", "arb->op").
WORD = re.compile(r"->|→|(?:[^\s→-]|-(?!>))+")
# Punctuation that ends a sentence or wraps a word, but is never part of a value.
_FILLER_WORDS = frozenset({"of", "my", "the", "it", "your", "our", "on", "to", "from", "in"})
_EDGE_PUNCTUATION = "\"'()[]{}!?,;:.…*"
# Words that put the next one in a chain's or protocol's place ("on arb", "from mainnet",
# "over to base", "in the Aave safety module"), keyed by field.
_CHAIN_CUES = frozenset({"on", "from", "to", "onto", "into", "via", "over", "across", "in", "at"})
_PROTOCOL_CUES = frozenset({"on", "from", "to", "into", "via", "in", "at", "with", "the", "using", "through"})
_CUES = {"chain": _CHAIN_CUES, "dest_chain": _CHAIN_CUES, "protocol": _PROTOCOL_CUES}
# Fields whose names are also tickers ("arb", "Aave") pick their span first; the rest avoid it.
_NAME_FIELDS = tuple(_CUES)


class WordRun(NamedTuple):
    """A run of consecutive words of a request."""

    words: int
    start: int
    end: int
    text: str
    before: str  # the word before the run, lower-cased ("" at the start)


def word_spans(prompt: str, pattern: re.Pattern[str] = WORD) -> list[tuple[int, int]]:
    """(start, end) of each `pattern` match (default: each word), edge punctuation and a
    possessive "'s" trimmed; a leading "." stays (".5")."""
    spans = []
    for match in pattern.finditer(prompt):
        start, end = match.start(), match.end()
        while start < end and prompt[start] in _EDGE_PUNCTUATION and prompt[start] != ".":
            start += 1
        while end > start and prompt[end - 1] in _EDGE_PUNCTUATION:
            end -= 1
        if prompt[start:end].lower().endswith(("'s", "’s")):  # possessive: "bob.eth's"
            end -= 2
        if start < end:
            spans.append((start, end))
    return spans


def word_runs(prompt: str, max_words: int = MAX_SPAN_WORDS, pattern: re.Pattern[str] = WORD) -> list[WordRun]:
    """Every run of up to `max_words` words (`word_spans` with `pattern`), in order of appearance."""
    words = word_spans(prompt, pattern)
    out = []
    for i in range(len(words)):
        before = prompt[words[i - 1][0] : words[i - 1][1]].lower() if i else ""
        for n in range(1, min(max_words, len(words) - i) + 1):
            start, end = words[i][0], words[i + n - 1][1]
            out.append(WordRun(n, start, end, prompt[start:end], before))
    return out


class SpanFinder:
    """Finds raw spans with a memo of canonical values, since n-grams repeat across a dataset."""

    def __init__(self, canonicalizer: Canonicalizer) -> None:
        self._canonicalizer = canonicalizer
        self._canonical = lru_cache(maxsize=200_000)(self._canonical_uncached)

    def _canonical_uncached(self, field: str, text: str) -> str | None:
        try:
            return self._canonicalizer.value(field, text)
        except NormalizationError:
            return None

    def canonical(self, field: str, text: str) -> str | None:
        """The canonical value of `text` as `field`, or None where it is not one."""
        return self._canonical(field, text)

    def is_known(self, field: str, canonical: str) -> bool:
        """Whether the registry knows a canonical chain or protocol (other fields: always)."""
        if field in ("chain", "dest_chain"):
            return self._canonicalizer.is_known_chain(canonical)
        if field == "protocol":
            return self._canonicalizer.is_known_protocol(canonical)
        return True

    def known_canonical(self, field: str, text: str) -> str | None:
        """`canonical`, where the registry also knows the result (chains and protocols)."""
        canonical = self._canonical(field, text)
        return canonical if canonical is not None and self.is_known(field, canonical) else None

    def is_known_token(self, text: str) -> bool:
        """Whether the registry knows `text` as a token name ("usd coin", "eth")."""
        return self._canonicalizer.registry.lists(text.lstrip("$"), "tokens")

    def is_registry_name(self, text: str) -> bool:
        """Whether the registry lists `text` itself as a chain or protocol name ("rocket pool"),
        not merely something that canonicalises to one."""
        return self._canonicalizer.registry.lists(text, "chains", "protocols")

    def find(self, prompt: str, field: str, value: str) -> str | None:
        """The span of `prompt` that canonicalises to `value`, or None."""
        best = self._best(word_runs(prompt), field, value)
        return best.text if best else None

    def _best(self, runs: list[WordRun], field: str, value: str, taken: list[WordRun] = ()) -> WordRun | None:
        """The longest span wins ("eth mainnet" over "eth", "one hundred and fifty" over
        "hundred and fifty"), except spans that begin or end with a filler word ("half" over
        "half of my"). Then chains and protocols prefer a span after a cue word ("on arb" over
        the ticker "ARB"). Then chains take the last occurrence (chains tend to follow the
        token: "eth ... on mainnet"), other fields the first. Spans overlapping `taken` lose
        unless nothing else matches.
        """
        matches = [run for run in runs if self._canonical(field, run.text) == value]
        if not matches:
            return None
        cues = _CUES.get(field, frozenset())
        last = field in ("chain", "dest_chain")

        def preference(match: WordRun) -> tuple:
            words = match.text.lower().split()
            free = not any(match.start < t.end and t.start < match.end for t in taken)
            clean_edges = words[0] not in _FILLER_WORDS and words[-1] not in _FILLER_WORDS
            return free, clean_edges, match.words, match.before in cues, match.start if last else -match.start

        return max(matches, key=preference)

    def raw_for_intent(self, prompt: str, intent: Intent) -> dict[str, str]:
        """Raw spans, chains and protocols first and every other field away from their words:
        where a chain or protocol is named like a token ("on arb, send 25 ARB", "stake my AAVE
        in the Aave safety module"), each field copies its own occurrence instead of both
        taking the same one."""
        fields = intent.fields()
        runs = word_runs(prompt)
        taken: list[WordRun] = []
        found: dict[str, str] = {}
        for field in sorted(fields, key=lambda name: name not in _NAME_FIELDS):
            if (best := self._best(runs, field, fields[field], taken)) is not None:
                found[field] = best.text
                taken.append(best)
        return {field: found[field] for field in fields if field in found}

    def with_raw(self, example: Example) -> Example:
        """The example with `raw` filled in for every value found in its prompt."""
        if example.raw is not None:
            return example
        raw = [self.raw_for_intent(example.prompt, intent) for intent in example.intents]
        return example.model_copy(update={"raw": raw})
