"""Property tests: canonicalisation fails only with NormalizationError, and is idempotent."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from brianft.normalize import (
    CanonicalIntent,
    Canonicalizer,
    NormalizationError,
    canonical_address,
    canonical_amount,
)
from brianft.schema import FIELDS, Action, Intent

CANON = Canonicalizer.default()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Realistic fragments mixed into arbitrary text, so that the interesting branches are reached.
AMOUNT_WORDS = [
    "1", "0", "5", "1,500", "0,5", ".5", "2.5", "k", "m", "bn", "million", "thousand", "hundred",
    "and", "a", "twenty", "five", "half", "quarter", "%", "percent", "all", "max", "entire", "balance",
    "whole", "loan", "-", " ", ".", ",", "e",
]  # fmt: skip
NAME_WORDS = [
    "eth", "ether", "usdc", "$", ".e", "wrapped", "the", "chain", "network", "mainnet", "arbitrum",
    "one", "base", "op", "bnb", "smart", "c-chain", "aave", "v3", "v", "2", "iii", "ii", "version",
    "rocket", "pool", "ether.fi", ".", "-", "_", " ", "0x", "bob", ".eth", "it",
]  # fmt: skip


def mixed(words: list[str]) -> st.SearchStrategy[str]:
    """Arbitrary text, or text glued together from realistic fragments (and arbitrary bits)."""
    fragments = st.lists(st.one_of(st.sampled_from(words), st.text(max_size=3)), max_size=6)
    return st.one_of(st.text(), fragments.map("".join), fragments.map(" ".join))


HEX = st.text(alphabet="0123456789abcdefABCDEF", min_size=38, max_size=42)
ADDRESS_TEXT = st.one_of(mixed(NAME_WORDS), HEX.map(lambda h: "0x" + h))


def check_canonical(function: Callable[[str], str], raw: str) -> None:
    try:
        first = function(raw)
    except NormalizationError:
        return
    assert isinstance(first, str) and first == first.strip() and first
    assert function(first) == first, f"not idempotent: {raw!r} -> {first!r} -> {function(first)!r}"


@SETTINGS
@given(mixed(AMOUNT_WORDS))
def test_amount_fails_cleanly_and_is_idempotent(raw):
    check_canonical(canonical_amount, raw)


@SETTINGS
@given(mixed(NAME_WORDS))
def test_token_fails_cleanly_and_is_idempotent(raw):
    check_canonical(CANON.token, raw)


@SETTINGS
@given(mixed(NAME_WORDS))
def test_chain_fails_cleanly_and_is_idempotent(raw):
    check_canonical(CANON.chain, raw)


@SETTINGS
@given(mixed(NAME_WORDS))
@example("foo v2 v3")
@example("x v2 5")
@example("0V0 0")
@example("v2v3")
def test_protocol_fails_cleanly_and_is_idempotent(raw):
    check_canonical(CANON.protocol, raw)


@SETTINGS
@given(ADDRESS_TEXT)
def test_address_fails_cleanly_and_is_idempotent(raw):
    check_canonical(canonical_address, raw)


@SETTINGS
@given(st.decimals(min_value=0, allow_nan=False, allow_infinity=False, places=8))
def test_amount_of_a_plain_decimal_is_exact(value):
    """Any positive decimal is kept digit for digit, whatever its length, less its trailing zeros."""
    text = format(value, "f")
    if value == 0:
        return
    expected = text.rstrip("0").rstrip(".") if "." in text else text
    assert canonical_amount(text) == expected


RAW_VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=20), st.sampled_from(NAME_WORDS))
RAW_KEYS = st.one_of(st.sampled_from(["action", *FIELDS]), st.text(max_size=10))
RAW_ACTIONS = st.one_of(st.sampled_from([a.value for a in Action]), st.text(max_size=12), st.none(), st.integers())


@st.composite
def raw_intents(draw) -> dict:
    raw = draw(st.dictionaries(RAW_KEYS, RAW_VALUES, max_size=10))
    if draw(st.booleans()):
        raw["action"] = draw(RAW_ACTIONS)
    return raw


@SETTINGS
@given(raw_intents(), st.booleans())
def test_intent_never_raises(raw, strict):
    result = CANON.intent(raw, strict=strict)
    assert isinstance(result, CanonicalIntent)
    assert all(p.severity in ("error", "warning") and p.message for p in result.problems)
    if result.intent is None:
        assert result.errors
        return
    assert isinstance(result.intent, Intent)
    assert result.intent.disallowed_fields() == []
    assert all(isinstance(v, str) and v.strip() for v in result.intent.fields().values())
    # a canonical intent is a fixed point
    again = CANON.intent(result.intent.to_dict(), strict=True)
    assert again.errors == []
    assert again.intent == result.intent
