"""The text the model is trained to emit, and a tolerant parser for what it actually emits.

Two formats (`data.target_format`), one intent per line, a request with no wallet action is
the single word `none`:

- `fields`: the action then `field=value` pairs separated by `;`

      swap; token1=eth; token2=usdc; amount=2.5k; chain=Arbitrum One
      bridge; token1=usdc; dest_chain=base

- `slots`: the action then one `|`-separated slot per field the action allows, in schema
  order (`SLOT_FIELDS`), empty where the request does not say, trailing empty slots left out.
  About 40% fewer tokens, so faster to train and to generate:

      swap|eth|usdc|2.5k||Arbitrum One
      bridge|usdc||||base

Values are copied as written in the request; `brianft.normalize` makes them canonical.
The parser also accepts plain JSON (a list of intents, `{"intents": [...]}` or Brian's
`{"completion": [...]}`), and never raises: it returns intents or a typed error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args

from brianft.schema import ALLOWED_FIELDS, FIELDS, Action, Example

NO_INTENT = "none"
FIELD_SEPARATOR = "; "
SLOT_SEPARATOR = "|"
TargetFormat = Literal["fields", "slots"]
TARGET_FORMATS: tuple[str, ...] = get_args(TargetFormat)
# The slots of each action: the fields it allows, in schema order.
SLOT_FIELDS: dict[str, tuple[str, ...]] = {
    action.value: tuple(name for name in FIELDS if name in ALLOWED_FIELDS[action]) for action in Action
}
_SLOT_LINE = re.compile(r"^([a-z_]+)\s*\|(.*)$")
_SPECIAL_TOKENS = re.compile(r"<\|[a-z_]+\|>|</s>|<s>|<eos>|<pad>|<\|endoftext\|>", re.IGNORECASE)
_FENCE = re.compile(r"^```[a-z]*\s*|\s*```$", re.IGNORECASE)
_LEADING_LABEL = re.compile(r"^(?:output|answer|intents?|assistant|result)\s*:\s*", re.IGNORECASE)
_ACTION_LINE = re.compile(r"^([a-z_]+)\s*(?:;(.*))?$")


class ParseErrorKind(StrEnum):
    EMPTY = "empty"
    MALFORMED_JSON = "malformed_json"
    BAD_SHAPE = "bad_shape"
    MALFORMED_LINE = "malformed_line"


@dataclass(frozen=True)
class ParseError:
    kind: ParseErrorKind
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class ParsedOutput:
    """Raw (not yet canonical) intents, or the reason the text could not be read."""

    intents: list[dict[str, Any]] = field(default_factory=list)
    error: ParseError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def render_target(intents: Sequence[Mapping[str, str]], fmt: TargetFormat = "fields") -> str:
    """Serialise intents (action + field values) in a training format."""
    if fmt not in TARGET_FORMATS:
        raise ValueError(f"unknown target format {fmt!r}: use {' or '.join(TARGET_FORMATS)}")
    if not intents:
        return NO_INTENT
    lines = []
    for intent in intents:
        action = str(intent["action"])
        for name in FIELDS:
            value = intent.get(name)
            # the parser splits on ';' and on every line break that str.splitlines knows ('\r', '\u2028', ...)
            if value is not None and not writable(value, fmt):
                raise ValueError(f"value {value!r} of {name} cannot be written in the target format")
        if fmt == "fields":
            parts = [action, *(f"{name}={intent[name]}" for name in FIELDS if intent.get(name) is not None)]
            lines.append(FIELD_SEPARATOR.join(parts))
            continue
        if extra := [name for name in FIELDS if intent.get(name) is not None and name not in SLOT_FIELDS[action]]:
            raise ValueError(f"{action} has no slot for {', '.join(extra)}")
        slots = [intent.get(name) or "" for name in SLOT_FIELDS[action]]
        lines.append(SLOT_SEPARATOR.join([action, *slots]).rstrip(SLOT_SEPARATOR))
    return "\n".join(lines)


def writable(value: str, fmt: TargetFormat | None = None) -> bool:
    """Whether the target format (None: both) can carry the value: no line break, no ';' or '='
    (fields), no '|' (slots)."""
    reserved = {"fields": ";=", "slots": "|"}.get(fmt, ";=|")
    return bool(value) and not any(c in value for c in reserved) and "".join(value.splitlines()) == value


def example_target(example: Example, *, copy_raw: bool = True, fmt: TargetFormat = "fields") -> str:
    """The training target of an example: values as written in the prompt where known."""
    rendered = []
    for index, intent in enumerate(example.intents):
        values = intent.to_dict()
        if copy_raw and example.raw is not None:
            values.update(example.raw[index])
        rendered.append(values)
    return render_target(rendered, fmt)


def _clean(text: str) -> str:
    text = _SPECIAL_TOKENS.sub("", text).strip()
    text = _FENCE.sub("", text).strip()
    return _LEADING_LABEL.sub("", text).strip()


def parse_output(text: Any) -> ParsedOutput:
    """Read model output in the line format or JSON. Never raises."""
    if not isinstance(text, str):
        return ParsedOutput(error=ParseError(ParseErrorKind.BAD_SHAPE, "output is not text"))
    cleaned = _clean(text)
    if not cleaned:
        return ParsedOutput(error=ParseError(ParseErrorKind.EMPTY, "the model produced no output"))
    if cleaned[0] in "[{":
        return _parse_json(cleaned)
    return _parse_lines(cleaned)


def _parse_json(text: str) -> ParsedOutput:
    try:
        value, _end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError) as exc:
        message = f"not valid JSON (truncated?): {str(exc)[:120]}"
        return ParsedOutput(error=ParseError(ParseErrorKind.MALFORMED_JSON, message))
    intents = _intents_from_json(value)
    if intents is None:
        message = "JSON is not a list of intents, {'intents': [...]} or {'completion': [...]}"
        return ParsedOutput(error=ParseError(ParseErrorKind.BAD_SHAPE, message))
    return ParsedOutput(intents=intents)


def _intents_from_json(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, dict):
        if "action" in value:
            value = [value]
        elif isinstance(value.get("result"), dict):
            return _intents_from_json(value["result"])
        else:
            for key in ("intents", "completion"):
                if key in value:
                    return _intents_from_json(value[key])
            return None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return None
    return [dict(item) for item in value]


def _parse_lines(text: str) -> ParsedOutput:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1 and lines[0].lower().rstrip(".") == NO_INTENT:
        return ParsedOutput(intents=[])
    intents = []
    for number, line in enumerate(lines, start=1):
        if slots := _SLOT_LINE.match(line):
            intent = _slot_intent(slots.group(1), slots.group(2).split(SLOT_SEPARATOR))
            if isinstance(intent, str):
                return _line_error(number, line, intent)
            intents.append(intent)
            continue
        match = _ACTION_LINE.match(line)
        if not match:
            return _line_error(number, line, "expected 'action; field=value; ...'")
        intent: dict[str, Any] = {"action": match.group(1)}
        for pair in (match.group(2) or "").split(";"):
            if not pair.strip():
                continue
            name, sep, value = pair.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name or not value:
                return _line_error(number, line, f"'{pair.strip()}' is not field=value")
            if name in intent:
                return _line_error(number, line, f"field {name!r} appears twice")
            intent[name] = value
        intents.append(intent)
    return ParsedOutput(intents=intents)


def _slot_intent(action: str, values: list[str]) -> dict[str, Any] | str:
    """The intent of a `slots` line, or why it is not one."""
    if action not in SLOT_FIELDS:
        return f"unknown action {action!r}"
    names = SLOT_FIELDS[action]
    if len(values) > len(names):
        return f"{len(values)} slots; {action} has {len(names)} ({', '.join(names)})"
    intent: dict[str, Any] = {"action": action}
    for name, value in zip(names, values, strict=False):
        if value.strip():
            intent[name] = value.strip()
    return intent


def _line_error(number: int, line: str, reason: str) -> ParsedOutput:
    message = f"line {number} {line[:80]!r}: {reason}"
    return ParsedOutput(error=ParseError(ParseErrorKind.MALFORMED_LINE, message))
