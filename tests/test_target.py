"""The training target format and the tolerant parser of model output."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from brianft.schema import FIELDS, Action, Example, Intent
from brianft.target import (
    NO_INTENT,
    SLOT_FIELDS,
    ParsedOutput,
    ParseError,
    ParseErrorKind,
    example_target,
    parse_output,
    render_target,
)

SETTINGS = settings(max_examples=200, deadline=None)

SWAP = {"action": "swap", "token1": "eth", "token2": "usdc", "amount": "2.5k", "chain": "Arbitrum One"}
BRIDGE = {"action": "bridge", "token1": "usdc", "dest_chain": "base"}
SWAP_LINE = "swap; token1=eth; token2=usdc; amount=2.5k; chain=Arbitrum One"
BRIDGE_LINE = "bridge; token1=usdc; dest_chain=base"
TWO_LINES = f"{SWAP_LINE}\n{BRIDGE_LINE}"

# --------------------------------------------------------------------------- parse_output: intents

PARSED = [
    # the line format
    (SWAP_LINE, [SWAP]),
    (TWO_LINES, [SWAP, BRIDGE]),
    (f"\n\n  {SWAP_LINE}  \n\n{BRIDGE_LINE}\n", [SWAP, BRIDGE]),
    ("swap;token1=eth;token2=usdc", [{"action": "swap", "token1": "eth", "token2": "usdc"}]),
    ("swap ; token1 = eth ;; token2= usdc;", [{"action": "swap", "token1": "eth", "token2": "usdc"}]),
    ("balance", [{"action": "balance"}]),
    ("total_supply; token1=usdc", [{"action": "total_supply", "token1": "usdc"}]),
    ("transfer; address=a=b", [{"action": "transfer", "address": "a=b"}]),
    ("swap; foo=bar", [{"action": "swap", "foo": "bar"}]),  # unknown fields are the canonicaliser's job
    # no action
    ("none", []),
    ("None", []),
    ("NONE.", []),
    ("  none\n", []),
    # JSON
    (json.dumps([SWAP, BRIDGE]), [SWAP, BRIDGE]),
    ("[]", []),
    (json.dumps(SWAP), [SWAP]),
    (json.dumps({"intents": [SWAP]}), [SWAP]),
    (json.dumps({"intents": []}), []),
    (json.dumps({"prompt": "p", "intents": [BRIDGE]}), [BRIDGE]),
    (json.dumps({"completion": [SWAP, BRIDGE]}), [SWAP, BRIDGE]),
    (json.dumps({"result": {"completion": [SWAP]}}), [SWAP]),
    (json.dumps({"result": {"prompt": "p", "completion": []}}), []),
    (json.dumps([{"action": "swap", "amount": 5}]), [{"action": "swap", "amount": 5}]),
    (json.dumps([SWAP]) + "\nI hope this helps!", [SWAP]),
    # wrappers around the answer
    (f"```\n{SWAP_LINE}\n```", [SWAP]),
    (f"```text\n{TWO_LINES}\n```", [SWAP, BRIDGE]),
    (f"```json\n{json.dumps([SWAP])}\n```", [SWAP]),
    (f"{SWAP_LINE}<|im_end|>", [SWAP]),
    (f"{SWAP_LINE}<|im_end|>\n<|endoftext|>", [SWAP]),
    (f"<|im_start|>{BRIDGE_LINE}<|eot_id|>", [BRIDGE]),
    (f"<s>{SWAP_LINE}</s>", [SWAP]),
    (f"{SWAP_LINE}<eos><pad><pad>", [SWAP]),
    ("none<|im_end|>", []),
    (f"Output: {SWAP_LINE}", [SWAP]),
    (f"output:\n{TWO_LINES}", [SWAP, BRIDGE]),
    (f"Answer: {json.dumps([SWAP])}", [SWAP]),
    ("Intents: none", []),
    (f"```\nOutput: {SWAP_LINE}\n```<|im_end|>", [SWAP]),
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse_output_intents(text, expected):
    parsed = parse_output(text)
    assert parsed.error is None, parsed.error
    assert parsed.ok
    assert parsed.intents == expected


# --------------------------------------------------------------------------- parse_output: errors

FAILED = [
    ("", ParseErrorKind.EMPTY),
    ("   \n\t ", ParseErrorKind.EMPTY),
    ("<|im_end|>", ParseErrorKind.EMPTY),
    ("```\n```", ParseErrorKind.EMPTY),
    ("Output:", ParseErrorKind.EMPTY),
    # truncated or broken JSON
    ('[{"action": "swap", "token1": "eth"', ParseErrorKind.MALFORMED_JSON),
    ('{"intents": [{"action": "swap"}', ParseErrorKind.MALFORMED_JSON),
    ("[", ParseErrorKind.MALFORMED_JSON),
    ("{action: swap}", ParseErrorKind.MALFORMED_JSON),
    ("[" * 5000, ParseErrorKind.MALFORMED_JSON),
    # JSON of the wrong shape
    ('{"foo": 1}', ParseErrorKind.BAD_SHAPE),
    ('["swap"]', ParseErrorKind.BAD_SHAPE),
    ('[{"action": "swap"}, 3]', ParseErrorKind.BAD_SHAPE),
    ('{"intents": "swap"}', ParseErrorKind.BAD_SHAPE),
    ('{"completion": null}', ParseErrorKind.BAD_SHAPE),
    ('{"result": "swap"}', ParseErrorKind.BAD_SHAPE),
    ('{"result": {"text": "none"}}', ParseErrorKind.BAD_SHAPE),
    # lines that are not the format
    ("I think you should swap your ETH", ParseErrorKind.MALFORMED_LINE),
    ("Sure! Here is the swap you asked for.", ParseErrorKind.MALFORMED_LINE),
    ("swap eth for usdc", ParseErrorKind.MALFORMED_LINE),
    ("swap; token1", ParseErrorKind.MALFORMED_LINE),
    ("swap; token1=", ParseErrorKind.MALFORMED_LINE),
    ("swap; =eth", ParseErrorKind.MALFORMED_LINE),
    ("swap; token1=eth; token1=btc", ParseErrorKind.MALFORMED_LINE),  # duplicate field
    ("swap; token1=eth; token1 = eth", ParseErrorKind.MALFORMED_LINE),
    (f"{SWAP_LINE}\nbridge; token1=usdc; token1=usdc", ParseErrorKind.MALFORMED_LINE),
    (f"{SWAP_LINE}\n???", ParseErrorKind.MALFORMED_LINE),
    ("SWAP; token1=eth", ParseErrorKind.MALFORMED_LINE),
    ("12345", ParseErrorKind.MALFORMED_LINE),
    ("none\nnone please", ParseErrorKind.MALFORMED_LINE),
]


@pytest.mark.parametrize(("text", "kind"), FAILED)
def test_parse_output_errors(text, kind):
    parsed = parse_output(text)
    assert not parsed.ok
    assert parsed.intents == []
    assert isinstance(parsed.error, ParseError)
    assert parsed.error.kind is kind
    assert parsed.error.message
    assert str(parsed.error).startswith(f"{kind}: ")


@pytest.mark.parametrize("value", [None, 3, b"swap; token1=eth", ["swap"], {"action": "swap"}])
def test_parse_output_non_text_is_bad_shape(value):
    parsed = parse_output(value)
    assert parsed.error is not None and parsed.error.kind is ParseErrorKind.BAD_SHAPE


def test_parse_error_names_the_line():
    parsed = parse_output(f"{SWAP_LINE}\nswap; token1=eth; token1=btc")
    assert parsed.error is not None
    assert "line 2" in parsed.error.message and "appears twice" in parsed.error.message


@pytest.mark.parametrize("depth", [100, 900, 990, 3000])
def test_parse_output_deeply_nested_json_never_raises(depth):
    for wrapper in ('{"result": ', '{"intents": ', '{"completion": ', "["):
        closer = "]" if wrapper == "[" else "}"
        parsed = parse_output(wrapper * depth + "[]" + closer * depth)
        assert isinstance(parsed, ParsedOutput)
        assert parsed.ok or parsed.error.kind in (ParseErrorKind.MALFORMED_JSON, ParseErrorKind.BAD_SHAPE)


def test_parsed_output_defaults():
    assert ParsedOutput().ok and ParsedOutput().intents == []


# --------------------------------------------------------------------------- render_target


def test_render_target_format():
    assert render_target([SWAP, BRIDGE]) == TWO_LINES
    assert render_target([]) == NO_INTENT == "none"
    assert render_target([{"action": "balance"}]) == "balance"


def test_render_target_follows_schema_field_order_and_skips_none():
    intent = {"protocol": "aave", "amount": "1", "action": "deposit", "token1": "eth", "chain": None}
    assert render_target([intent]) == "deposit; token1=eth; amount=1; protocol=aave"


@pytest.mark.parametrize("value", ["a;b", "a=b", "a\nb", "a\rb", "a\u2028b", "a\x85b", "a\x0bb"])
def test_render_target_rejects_values_it_cannot_write(value):
    with pytest.raises(ValueError, match="cannot be written"):
        render_target([{"action": "transfer", "address": value}])


@pytest.mark.parametrize(
    "intents",
    [
        [],
        [SWAP],
        [SWAP, BRIDGE],
        [{"action": "balance"}],
        [{"action": "transfer", "token1": "ETH", "amount": "0.5", "address": "bob.eth"}],
        [
            {
                "action": "stake",
                "token1": "ETH",
                "amount": "max",
                "protocol": "Rocket Pool",
                "chain": "mainnet",
            }
        ],
        [
            {
                "action": "approve",
                "token1": "USDC",
                "amount": "50%",
                "address": "0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045",
            }
        ],
        [{"action": a.value} for a in Action],
    ],
)
def test_render_then_parse_round_trip(intents):
    assert parse_output(render_target(intents)).intents == intents
    assert parse_output(render_target(intents, "slots")).intents == intents


def test_slots_format_writes_one_slot_per_allowed_field():
    assert render_target([SWAP], "slots") == "swap|" + "|".join(
        SWAP.get(name, "") for name in SLOT_FIELDS["swap"]
    ).rstrip("|")
    assert (
        render_target([{"action": "bridge", "token1": "usdc", "dest_chain": "base"}], "slots") == "bridge|usdc||||base"
    )
    assert render_target([{"action": "balance"}], "slots") == "balance"
    assert render_target([], "slots") == "none"
    with pytest.raises(ValueError, match="no slot for protocol"):
        render_target([{"action": "transfer", "protocol": "aave"}], "slots")
    with pytest.raises(ValueError, match="cannot be written"):
        render_target([{"action": "transfer", "address": "a|b"}], "slots")
    with pytest.raises(ValueError, match="unknown target format"):
        render_target([SWAP], "xml")


@pytest.mark.parametrize(
    ("text", "error"),
    [("teleport|eth", "unknown action"), ("wrap|eth|1|base|extra", "4 slots; wrap has 3")],
)
def test_bad_slot_lines_are_errors(text, error):
    parsed = parse_output(text)
    assert parsed.error is not None and parsed.error.kind == ParseErrorKind.MALFORMED_LINE
    assert error in parsed.error.message


def test_example_target_copies_raw_values():
    example = Example(
        prompt="swap 2.5k usdc to eth on Arbitrum One",
        intents=[Intent(action="swap", token1="USDC", token2="ETH", amount="2500", chain="arbitrum")],
        raw=[{"token1": "usdc", "amount": "2.5k", "chain": "Arbitrum One"}],
    )
    assert example_target(example) == "swap; token1=usdc; token2=ETH; amount=2.5k; chain=Arbitrum One"
    assert example_target(example, copy_raw=False) == "swap; token1=USDC; token2=ETH; amount=2500; chain=arbitrum"
    assert example_target(Example(prompt="hi", intents=[])) == "none"


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(st.text())
@example("{" + '"result": {' * 990)
@example("[" * 2000)
@example("```")
@example("<|im_end|>none")
def test_parse_output_never_raises(text):
    parsed = parse_output(text)
    assert isinstance(parsed, ParsedOutput)
    if parsed.ok:
        assert isinstance(parsed.intents, list)
        assert all(isinstance(intent, dict) for intent in parsed.intents)
    else:
        assert parsed.intents == []
        assert isinstance(parsed.error.kind, ParseErrorKind)


@SETTINGS
@given(st.lists(st.sampled_from(["swap; ", "token1=", "eth", ";", "\n", "none", "[", "{", '"', "}", "]", "="])))
def test_parse_output_never_raises_on_format_fragments(fragments):
    assert isinstance(parse_output("".join(fragments)), ParsedOutput)


# Values as a model would copy them from a request: no separator, no line break, no markup that
# the parser strips around the answer (special tokens, code fences), nothing to strip.
VALUE = (
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
            blacklist_characters=";=<>`",
        ),
        min_size=1,
        max_size=20,
    )
    .map(str.strip)
    .filter(bool)
)


@st.composite
def raw_intent(draw) -> dict[str, str]:
    action = draw(st.sampled_from([a.value for a in Action]))
    names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS)))
    values = {name: draw(VALUE) for name in FIELDS if name in names}  # schema order
    return {"action": action, **values}


@SETTINGS
@given(st.lists(raw_intent(), max_size=4))
def test_render_then_parse_is_identity(intents):
    assert parse_output(render_target(intents)).intents == intents


@SETTINGS
@given(st.lists(raw_intent(), max_size=4))
def test_render_then_parse_is_identity_in_slots(intents):
    intents = [
        {k: v for k, v in i.items() if k == "action" or (k in SLOT_FIELDS[i["action"]] and "|" not in v)}
        for i in intents
    ]
    assert parse_output(render_target(intents, "slots")).intents == intents
