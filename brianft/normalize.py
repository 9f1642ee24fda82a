"""Deterministic canonicalisation of intent fields (shared/INTENT_SCHEMA.md, "canonical form").

The model copies values as written in the request ("2.5k", "Arbitrum One", "ten"); this
module turns them into canonical values and reports what it could not. It never guesses:
an amount that is not a number, or an address that is not an address, is an error, not a
repair. Registries (tokens, chains, protocols) are YAML files that users can extend.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from Crypto.Hash import keccak
from pydantic import ValidationError
from rapidfuzz.distance import DamerauLevenshtein

from brianft.schema import ALLOWED_FIELDS, FIELDS, Action, Intent


class NormalizationError(ValueError):
    """A raw value that cannot be turned into a canonical one; the message says why."""


class RegistryError(ValueError):
    """A registry file that is missing, unreadable or of the wrong shape."""


# --------------------------------------------------------------------------- amounts

_MAX_PHRASES = frozenset(
    {
        "all", "max", "maximum", "everything", "unlimited", "infinite", "infinity", "all of it",
        "all of them", "all of my", "all my", "everything i have", "all i have", "the lot",
        "whole thing", "the whole thing", "all available", "full", "entire", "whole",
    }
)  # fmt: skip
_MAX_PATTERN = re.compile(
    r"^(?:my |the )?(?:entire|whole|full|total|complete) "
    r"(?:balance|loan|debt|amount|position|stack|bag|stake|deposit|holdings?)$"
)
_SHARE_WORDS = {
    "half": "50",
    "a half": "50",
    "one half": "50",
    "half of it": "50",
    "half of my": "50",
    "quarter": "25",
    "a quarter": "25",
    "one quarter": "25",
    "a fourth": "25",
    "three quarters": "75",
    "tenth": "10",
    "a tenth": "10",
    "one tenth": "10",
}
_UNIT_WORDS = {w: i for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
))}  # fmt: skip
_TENS_WORDS = {
    w: 10 * (i + 2)
    for i, w in enumerate(("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"))
}
_SCALE_WORDS = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_SUFFIXES = {
    "k": 10**3, "thousand": 10**3, "grand": 10**3, "m": 10**6, "mm": 10**6, "mil": 10**6,
    "million": 10**6, "b": 10**9, "bn": 10**9, "billion": 10**9,
}  # fmt: skip
_NUMBER = r"(?:\d[\d,.]*|\.\d+)"
_SUFFIXED = re.compile(rf"^({_NUMBER})\s*({'|'.join(sorted(_SUFFIXES, key=len, reverse=True))})$")
_PERCENT = re.compile(rf"^({_NUMBER})\s*(?:%|percent|per cent|pct)$")
_THOUSANDS_COMMA = re.compile(r"^[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
_THOUSANDS_DOT = re.compile(r"^[1-9]\d{0,2}(?:\.\d{3})+,\d+$|^[1-9]\d{0,2}(?:\.\d{3}){2,}$")
_DECIMAL_COMMA = re.compile(r"^\d*,\d+$")
_PLAIN = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
# Amounts are exact: the default context would round anything past 28 digits (wei amounts have more).
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(_EXACT), "f")


def _parse_number(text: str) -> Decimal:
    """A number written with digits, in any of the separator conventions the schema lists."""
    if _THOUSANDS_COMMA.match(text) and not text.startswith("0,"):
        text = text.replace(",", "")
    elif _THOUSANDS_DOT.match(text):
        text = text.replace(".", "").replace(",", ".")
    elif _DECIMAL_COMMA.match(text):
        text = text.replace(",", ".")
    if not _PLAIN.match(text):
        raise NormalizationError(f"not a plain number: {text!r}")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern above already guards this
        raise NormalizationError(f"not a number: {text!r}") from exc


def _parse_number_words(words: list[str]) -> Decimal | None:
    """'one hundred and fifty' -> 150; None when the words are not a number ('five five', 'one two')."""
    total, current, last, last_scale = 0, 0, "", 0  # last: the kind of the previous word
    for position, word in enumerate(words):
        if word == "and" and last in ("hundred", "scale"):
            continue
        number = _UNIT_WORDS.get(word, _TENS_WORDS.get(word))  # 0-19, or 20-90
        if word == "a" and position == 0:
            current, last = 1, "a"
        elif number is not None and number < 10 and last in ("", "tens", "hundred", "scale"):
            current, last = current + number, "unit"  # "five", "twenty five", "hundred and five"
        elif number is not None and last in ("", "hundred", "scale"):
            current, last = current + number, "tens" if number >= 20 else "unit"
        elif word in ("hundred", "dozen") and last != "hundred" and current < 100:
            current, last = (current or 1) * (100 if word == "hundred" else 12), "hundred"
        elif word in _SCALE_WORDS and last != "scale" and (not last_scale or _SCALE_WORDS[word] < last_scale):
            last_scale = _SCALE_WORDS[word]
            total, current, last = total + (current or 1) * last_scale, 0, "scale"
        else:
            return None
    return Decimal(total + current) if last else None


def canonical_amount(raw: str) -> str:
    """'1,500' -> '1500', '2.5k' -> '2500', 'ten' -> '10', 'half' -> '50%', 'all' -> 'max'."""
    text = re.sub(r"\s+", " ", str(raw).strip().lower().replace("-", " ")).rstrip(".")
    if not text:
        raise NormalizationError("empty amount")
    if text in _MAX_PHRASES or _MAX_PATTERN.match(text):
        return "max"
    if text in _SHARE_WORDS:
        return _SHARE_WORDS[text] + "%"
    if match := _PERCENT.match(text):
        share = _parse_number(match.group(1))
        if not 0 < share <= 100:
            raise NormalizationError(f"a share must be between 0 and 100%: {raw!r}")
        return _decimal_text(share) + "%"
    if match := _SUFFIXED.match(text):
        value = _EXACT.multiply(_parse_number(match.group(1)), _SUFFIXES[match.group(2)])
    elif (words := _parse_number_words(text.split())) is not None:
        value = words
    elif (mixed := _parse_mixed_number(text)) is not None:
        value = mixed
    elif (spoken := _parse_point_number(text)) is not None:
        value = spoken
    else:
        value = _parse_number(text)
    # Zero is a real amount (an allowance of 0 revokes it); negatives never parse.
    return _decimal_text(value)


_FRACTION_TAILS = {
    " and a half": Decimal("0.5"),
    " and a quarter": Decimal("0.25"),
    " and three quarters": Decimal("0.75"),
}


def _parse_mixed_number(text: str) -> Decimal | None:
    """'one and a half' -> 1.5, '2 and a quarter' -> 2.25; None otherwise."""
    for tail, fraction in _FRACTION_TAILS.items():
        whole = text.removesuffix(tail)
        if whole == text or not whole:
            continue
        number = _parse_number_words(whole.split())
        if number is None and _PLAIN.match(whole):
            number = Decimal(whole)
        return None if number is None else number + fraction
    return None


def _parse_point_number(text: str) -> Decimal | None:
    """'zero point five' -> 0.5, 'one point two five' -> 1.25; None otherwise."""
    whole, sep, fraction = text.partition(" point ")
    digits = [_UNIT_WORDS.get(word) for word in fraction.split()]
    if not sep or not digits or any(d is None or d > 9 for d in digits):
        return None
    integer = _parse_number_words(whole.split())
    if integer is None:
        return None
    return Decimal(f"{integer}.{''.join(str(d) for d in digits)}")


# --------------------------------------------------------------------------- addresses

_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NAME_LABEL = r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?"
_NAME_ADDRESS = re.compile(rf"^(?:{_NAME_LABEL}\.)+[a-z]{{2,}}$")
_BASE58_ADDRESS = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")


def eip55_checksum(address: str) -> str:
    """The EIP-55 mixed-case form of a 0x address."""
    lower = address[2:].lower()
    digest = keccak.new(digest_bits=256, data=lower.encode("ascii")).hexdigest()
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(lower, digest[:40], strict=True))


def checksum_warning(address: str) -> str | None:
    """A warning for a mixed-case 0x address whose EIP-55 checksum is wrong (never fixed silently)."""
    if not _HEX_ADDRESS.match(address):
        return None
    body = address[2:]
    if body == body.lower() or body == body.upper():
        return None  # no checksum was written
    if eip55_checksum(address) != address:
        return f"address {address} has an invalid EIP-55 checksum: check it before sending anything"
    return None


def canonical_address(raw: str) -> str:
    """0x addresses are kept exactly as written; ENS-style names are lower-cased."""
    text = str(raw).strip()
    if _HEX_ADDRESS.match(text):
        return text
    if _NAME_ADDRESS.match(text.lower()):
        return text.lower()  # an ENS-style name, even one that starts with 0x ("0xmaki.eth")
    if text.lower().startswith("0x"):
        raise NormalizationError(f"invalid 0x address (expected 0x and 40 hex digits): {text!r}")
    if _BASE58_ADDRESS.match(text):
        return text
    raise NormalizationError(f"not an address or ENS-style name: {text!r}")


def same_address(a: str, b: str) -> bool:
    return a.lower() == b.lower()


# --------------------------------------------------------------------------- registry


def _read_yaml_mapping(path: Path | Any) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"cannot read registry file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RegistryError(f"registry file {path} must be a mapping, got {type(data).__name__}")
    return data


def _read_kinds(path: Path | Any) -> dict[str, Any]:
    """kinds.yaml: `staking_protocols` (a list of protocol slugs) and `wrapped_natives` (native
    ticker -> wrapped ticker); each key present replaces the earlier file's."""
    data = _read_yaml_mapping(path)
    if unknown := sorted(set(data) - {"staking_protocols", "wrapped_natives"}):
        raise RegistryError(f"{path}: unknown keys {unknown}")
    kinds: dict[str, Any] = {}
    if "staking_protocols" in data:
        slugs = data["staking_protocols"]
        if not isinstance(slugs, list) or not all(isinstance(s, str) and s.strip() for s in slugs):
            raise RegistryError(f"{path}: staking_protocols must be a list of protocol slugs")
        kinds["staking_protocols"] = [_clean_name(s) for s in slugs]
    if "wrapped_natives" in data:
        pairs = data["wrapped_natives"]
        if not isinstance(pairs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k.strip() and v.strip() for k, v in pairs.items()
        ):
            raise RegistryError(f"{path}: wrapped_natives must map native tickers to wrapped tickers")
        kinds["wrapped_natives"] = {k.strip().upper(): v.strip().upper() for k, v in pairs.items()}
    return kinds


def _clean_name(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


@dataclass(frozen=True)
class Registry:
    """Known tokens, chains and protocols: canonical value by every lower-cased name."""

    tokens: dict[str, str] = field(default_factory=dict)
    chains: dict[str, str] = field(default_factory=dict)
    protocols: dict[str, str] = field(default_factory=dict)
    staking_protocols: frozenset[str] = frozenset()  # protocol slugs that only stake (kinds.yaml)
    wrapped_natives: dict[str, str] = field(default_factory=dict)  # native ticker -> wrapped ticker

    @classmethod
    def load(cls, extra_dirs: Iterable[Path] = ()) -> Registry:
        """The packaged registries, extended by same-named files in `extra_dirs` (later wins)."""
        packaged = resources.files("brianft") / "resources" / "registry"
        sources = [packaged, *[Path(d) for d in extra_dirs]]
        tokens: dict[str, str] = {}
        chains: dict[str, str] = {}
        protocols: dict[str, str] = {}
        kinds: dict[str, Any] = {}
        for source in sources:
            if isinstance(source, Path) and not source.is_dir():
                raise RegistryError(f"registry directory not found: {source}")
            if (path := source / "tokens.yaml").is_file():
                for name, ticker in _read_yaml_mapping(path).items():
                    if not isinstance(ticker, str) or not ticker.strip():
                        raise RegistryError(f"{path}: token {name!r} must map to a ticker string")
                    tokens[_clean_name(str(name))] = ticker.strip().upper()
            for filename, target in (("chains.yaml", chains), ("protocols.yaml", protocols)):
                if not (path := source / filename).is_file():
                    continue
                for slug, synonyms in _read_yaml_mapping(path).items():
                    if synonyms is None:
                        synonyms = []
                    if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
                        raise RegistryError(f"{path}: {slug!r} must map to a list of names")
                    canonical = _clean_name(str(slug))
                    for name in [canonical, *synonyms]:
                        target[_clean_name(name)] = canonical
            if (path := source / "kinds.yaml").is_file():
                kinds |= _read_kinds(path)
        return cls(
            tokens=tokens,
            chains=chains,
            protocols=protocols,
            # a protocol may be listed by any of its names ("rocket pool"): keep its slug
            staking_protocols=frozenset(protocols.get(name, name) for name in kinds.get("staking_protocols", ())),
            wrapped_natives=dict(kinds.get("wrapped_natives", {})),
        )

    def lists(self, text: str, *tables: str) -> bool:
        """Whether `text` itself, cleaned as the registry files' names are, is a name in any of
        `tables` ("tokens", "chains", "protocols"): not merely something that canonicalises to one."""
        name = _clean_name(text)
        return any(name in getattr(self, table) for table in tables)

    @cached_property
    def chain_names_by_length(self) -> dict[int, list[tuple[str, str]]]:
        """(name, slug) of every chain name, by the name's length: misspellings are looked up
        among names of about their own length (an edit distance is at least the difference)."""
        by_length: dict[int, list[tuple[str, str]]] = {}
        for name, slug in self.chains.items():
            by_length.setdefault(len(name), []).append((name, slug))
        return by_length

    @cached_property
    def protocols_without_spaces(self) -> dict[str, str]:
        """Slug by every protocol name with its spaces removed ("rocketpool"); the first listed wins."""
        squashed: dict[str, str] = {}
        for name, slug in self.protocols.items():
            squashed.setdefault(name.replace(" ", ""), slug)
        return squashed

    @cached_property
    def chain_slugs(self) -> frozenset[str]:
        return frozenset(self.chains.values())

    @cached_property
    def protocol_slugs(self) -> frozenset[str]:
        return frozenset(self.protocols.values())


# --------------------------------------------------------------------------- tokens, chains, protocols

_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.+_-]{0,19}$")
_NOT_TOKENS = frozenset(
    {"it", "them", "that", "this", "those", "these", "token", "tokens", "coin", "coins", "crypto",
     "money", "funds", "all", "my", "some", "none", "null", "na", "n/a", "holdings", "assets", "portfolio",
     "wallet", "balance", "balances"}
)  # fmt: skip
_CHAIN_TEXT = re.compile(r"^[a-z0-9][a-z0-9 ._-]*$")
_CHAIN_NOISE_WORDS = ("the", "chain", "network", "mainnet", "blockchain")
# A version suffix: "v3", "v 2", "version 3", or a Roman numeral as a separate word ("Compound III",
# but not the end of "Hawaii").
_PROTOCOL_VERSION = re.compile(r"(?:\s*v\s?\d+(?:\.\d+)?|\s+(?:version \d+|iii|ii|iv))$")


_STAKING_FORM = {Action.DEPOSIT: Action.STAKE, Action.WITHDRAW: Action.UNSTAKE}


def _strip_versions(text: str) -> str:
    """'aave v3' -> 'aave'; repeated, so that a slug never ends in a version ('foo v2 v3' -> 'foo')."""
    while (shorter := _PROTOCOL_VERSION.sub("", text).strip()) != text:
        text = shorter
    return text


@dataclass(frozen=True)
class Canonicalizer:
    """Field-by-field canonicalisation against one registry."""

    registry: Registry

    @classmethod
    def default(cls) -> Canonicalizer:
        return cls(Registry.load())

    def token(self, raw: str) -> str:
        text = _clean_name(str(raw)).lstrip("$").strip()
        if not text:
            raise NormalizationError("empty token")
        if text in self.registry.tokens:
            return self.registry.tokens[text]
        if _HEX_ADDRESS.match(str(raw).strip()):
            return str(raw).strip()  # a token given by its contract address
        if text in _NOT_TOKENS:
            raise NormalizationError(f"{raw!r} is not a token")
        ticker = text.upper()
        if not _TICKER.match(ticker):
            raise NormalizationError(f"not a token ticker: {raw!r}")
        return ticker

    def chain(self, raw: str) -> str:
        """Known names map to their slug, obvious misspellings too; unknown chains stay lower-cased."""
        text = _clean_name(str(raw)).strip(" .,!?")
        if not text or not _CHAIN_TEXT.match(text):
            raise NormalizationError(f"not a chain name: {raw!r}")
        if text in self.registry.chains:
            return self.registry.chains[text]
        words = [w for w in text.split() if w not in _CHAIN_NOISE_WORDS]
        stripped = " ".join(words)
        if stripped in self.registry.chains:
            return self.registry.chains[stripped]
        if misspelt := self._closest_chain(stripped or text):
            return misspelt
        return text

    def _closest_chain(self, text: str) -> str | None:
        if len(text) < 4:
            return None
        limit = 1 if len(text) <= 6 else 2
        by_length = self.registry.chain_names_by_length
        scored = [
            (DamerauLevenshtein.distance(text, name), slug)
            for length in range(max(4, len(text) - limit), len(text) + limit + 1)
            for name, slug in by_length.get(length, ())
        ]
        best = min((d for d, _ in scored), default=limit + 1)
        slugs = {slug for d, slug in scored if d == best}
        return slugs.pop() if best <= limit and len(slugs) == 1 else None

    def is_known_chain(self, slug: str) -> bool:
        return slug in self.registry.chain_slugs

    def is_known_protocol(self, slug: str) -> bool:
        return slug in self.registry.protocol_slugs

    def protocol(self, raw: str) -> str:
        text = _strip_versions(re.sub(r"[._\-]+", " ", _clean_name(str(raw))))
        if not text:
            raise NormalizationError(f"not a protocol name: {raw!r}")
        squashed = _strip_versions(text.replace(" ", ""))  # "curve v2.5" -> "curvev25" -> "curve"
        for candidate in (text, squashed):
            if candidate in self.registry.protocols:
                return self.registry.protocols[candidate]
        if squashed in self.registry.protocols_without_spaces:
            return self.registry.protocols_without_spaces[squashed]
        if not re.fullmatch(r"[a-z0-9]+", squashed):
            raise NormalizationError(f"not a protocol name: {raw!r}")
        return squashed

    def value(self, field_name: str, raw: str) -> str:
        """The canonical form of one field's raw value; raises NormalizationError."""
        if field_name in ("token1", "token2"):
            return self.token(raw)
        if field_name in ("amount", "amount_out"):
            return canonical_amount(raw)
        if field_name in ("chain", "dest_chain"):
            return self.chain(raw)
        if field_name == "address":
            return canonical_address(raw)
        if field_name == "protocol":
            return self.protocol(raw)
        raise NormalizationError(f"unknown field {field_name!r}")

    def settled_action(self, action: Action, values: dict[str, str]) -> tuple[Action, dict[str, str], str | None]:
        """The action that the registry's facts (kinds.yaml) settle for canonical `values`, the
        values it carries, and what changed (None: nothing). Only a relabelling of values already
        there: a staking-only protocol takes no deposit or withdrawal, and exchanging a native coin
        for its own wrapped token (or back) is a wrap (an unwrap), whatever verb the request used."""
        protocol = values.get("protocol")
        if action in _STAKING_FORM and protocol in self.registry.staking_protocols:
            settled = _STAKING_FORM[action]
            return settled, values, f"{action} with {protocol}, a staking protocol, read as {settled}"
        token1, token2 = values.get("token1"), values.get("token2")
        if action is Action.SWAP and token1 and token2:
            wrapped = self.registry.wrapped_natives
            settled = Action.WRAP if wrapped.get(token1) == token2 else None
            settled = Action.UNWRAP if wrapped.get(token2) == token1 else settled
            if settled is not None:
                # one-to-one: the amount given is the amount received
                amount = values.get("amount") or values.get("amount_out")
                kept = {"token1": token1, "amount": amount, "chain": values.get("chain")}
                kept = {name: value for name, value in kept.items() if value is not None}
                return settled, kept, f"swap of {token1} for {token2} read as {settled}"
        return action, values, None

    def intent(self, raw: Mapping[str, Any], *, strict: bool = False) -> CanonicalIntent:
        """Canonicalise one raw intent. Bad fields are dropped and reported, never repaired.

        `strict` (data validation) also rejects non-string values, which the lenient mode
        (user data conversion, model output) turns into strings.
        """
        problems: list[Problem] = []
        if not isinstance(raw, Mapping):
            return CanonicalIntent(None, [Problem("error", None, "an intent must be an object")])
        action_raw = raw.get("action")
        action_text = _clean_name(str(action_raw)).replace(" ", "_") if action_raw is not None else ""
        try:
            action = Action(action_text)
        except ValueError:
            message = "missing action" if not action_text else f"unknown action {action_raw!r}"
            return CanonicalIntent(None, [Problem("error", "action", message)])
        values: dict[str, str] = {}
        for name, value in raw.items():
            if name == "action" or value is None or (isinstance(value, str) and not value.strip()):
                continue
            if name not in FIELDS:
                problems.append(Problem("error", name, f"unknown field {name!r}"))
                continue
            if name not in ALLOWED_FIELDS[action]:
                problems.append(Problem("error", name, f"field {name!r} is not allowed for {action}"))
                continue
            if not isinstance(value, str):
                if strict or isinstance(value, bool) or not isinstance(value, int | float):
                    problems.append(Problem("error", name, f"{name} must be a string, got {value!r}"))
                    continue
                value = str(value)
            try:
                values[name] = self.value(name, value)
            except NormalizationError as exc:
                problems.append(Problem("error", name, str(exc)))
                continue
            if name in ("chain", "dest_chain") and not self.is_known_chain(values[name]):
                problems.append(Problem("warning", name, f"unknown chain {values[name]!r}"))
            if name == "address" and (warning := checksum_warning(values[name])):
                problems.append(Problem("warning", name, warning))
        action, values, change = self.settled_action(action, values)
        if change is not None:
            # a label must already name the settled action; model output is relabelled, and says so
            problems.append(Problem("error" if strict else "warning", "action", change))
        try:
            intent = Intent(action=action, **values)
        except ValidationError as exc:  # pragma: no cover - values are already checked above
            return CanonicalIntent(None, [*problems, Problem("error", None, str(exc))])
        return CanonicalIntent(intent, problems)


@dataclass(frozen=True)
class Problem:
    severity: Literal["error", "warning"]
    field: str | None
    message: str

    def __str__(self) -> str:
        return self.message if self.field is None else f"{self.field}: {self.message}"


@dataclass(frozen=True)
class CanonicalIntent:
    intent: Intent | None
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]
