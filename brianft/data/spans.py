"""Find the text in a request that a canonical label value was written as.

The model is trained to copy values as written ("2.5k", "Arbitrum One", "ten") and leave
canonicalisation to code, so every labelled example needs those raw spans. The generator
records them by construction; for hand-labelled examples they are found here by trying
every short word n-gram of the request against the canonicaliser.
"""

from __future__ import annotations

import re
from functools import lru_cache

from brianft.normalize import Canonicalizer, NormalizationError
from brianft.schema import Example, Intent

MAX_SPAN_WORDS = 5
_WORD = re.compile(r"\S+")
# Punctuation that ends a sentence or wraps a word, but is never part of a value.
_FILLER_WORDS = frozenset({"of", "my", "the", "it", "your", "our", "on", "to", "from", "in"})
_EDGE_PUNCTUATION = "\"'()[]{}!?,;:.…*"


def word_spans(prompt: str, pattern: re.Pattern[str] = _WORD) -> list[tuple[int, int]]:
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


def _candidates(prompt: str) -> list[tuple[int, int, str]]:
    """(word count, start offset, text) of every n-gram of up to MAX_SPAN_WORDS words."""
    words = word_spans(prompt)
    out = []
    for i in range(len(words)):
        for n in range(1, MAX_SPAN_WORDS + 1):
            if i + n > len(words):
                break
            start, end = words[i][0], words[i + n - 1][1]
            out.append((n, start, prompt[start:end]))
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
        """The span of `prompt` that canonicalises to `value`, or None.

        The longest span wins ("eth mainnet" over "eth", "one hundred and fifty" over
        "hundred and fifty"), except spans that begin or end with a filler word ("half" over
        "half of my"). Among equals, chains take the last occurrence (chains tend to follow
        the token: "eth ... on mainnet"), others the first.
        """
        matches = [(n, start, text) for n, start, text in _candidates(prompt) if self._canonical(field, text) == value]
        if not matches:
            return None
        last = field in ("chain", "dest_chain")

        def preference(match: tuple[int, int, str]) -> tuple[bool, int, int]:
            n, start, text = match
            words = text.lower().split()
            clean_edges = words[0] not in _FILLER_WORDS and words[-1] not in _FILLER_WORDS
            return clean_edges, n, start if last else -start

        best = max(matches, key=preference)
        return best[2]

    def raw_for_intent(self, prompt: str, intent: Intent) -> dict[str, str]:
        raw = {}
        for field, value in intent.fields().items():
            if (span := self.find(prompt, field, value)) is not None:
                raw[field] = span
        return raw

    def with_raw(self, example: Example) -> Example:
        """The example with `raw` filled in for every value found in its prompt."""
        if example.raw is not None:
            return example
        raw = [self.raw_for_intent(example.prompt, intent) for intent in example.intents]
        return example.model_copy(update={"raw": raw})
