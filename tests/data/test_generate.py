import random
import re
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brianft.data import generate as gen
from brianft.data.generate import FAMILIES, HELD_OUT_FAMILIES, Family, generate_examples
from brianft.normalize import Canonicalizer, checksum_warning, eip55_checksum
from brianft.schema import Action, Example
from brianft.target import example_target, parse_output

HEX = re.compile(r"0x[0-9a-fA-F]{40}")


@pytest.fixture(scope="module")
def canonicalizer() -> Canonicalizer:
    return Canonicalizer.default()


@pytest.fixture(scope="module")
def sample(canonicalizer: Canonicalizer) -> list[Example]:
    return generate_examples(800, 11, canonicalizer=canonicalizer)


def key(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def check_example(example: Example, canonicalizer: Canonicalizer) -> None:
    """Every invariant an example must keep: raw spans verbatim, labels canonical, target round trip."""
    assert example.source == "synthetic"
    assert example.family in FAMILIES
    assert example.prompt == example.prompt.strip() and example.prompt
    assert example.raw is not None and len(example.raw) == len(example.intents)
    for intent, raw in zip(example.intents, example.raw, strict=True):
        assert set(raw) == set(intent.fields()), (example.prompt, raw, intent)
        for field, raw_value in raw.items():
            assert raw_value in example.prompt, (example.prompt, field, raw_value)
            assert canonicalizer.value(field, raw_value) == getattr(intent, field), (example.prompt, field)
        checked = canonicalizer.intent(intent.to_dict(), strict=True)
        assert not checked.errors, (example.prompt, checked.errors)
        assert checked.intent == intent
        assert not intent.disallowed_fields()
    parsed = parse_output(example_target(example))
    assert parsed.ok, parsed.error
    assert parsed.intents == [
        {"action": intent.action.value, **raw} for intent, raw in zip(example.intents, example.raw, strict=True)
    ]


# --------------------------------------------------------------------------- families


def test_families_cover_every_action_with_several_phrasings() -> None:
    assert len(FAMILIES) >= 45
    assert all(isinstance(f, Family) and f.name == name for name, f in FAMILIES.items())
    singles = Counter(f.action for f in FAMILIES.values() if f.kind == "single")
    for action in Action:
        assert 2 <= singles[action.value] <= 4, action
    kinds = Counter(f.kind for f in FAMILIES.values())
    assert kinds["multi"] >= 6 and kinds["out_of_scope"] >= 3 and kinds["missing"] >= 5
    assert all(f.action == "multi" and len(f.intents) >= 2 for f in FAMILIES.values() if f.kind == "multi")
    assert any(len(f.intents) == 3 for f in FAMILIES.values())
    assert all(f.action == "none" and not f.intents for f in FAMILIES.values() if f.kind == "out_of_scope")


def test_held_out_families_leave_every_action_to_training() -> None:
    assert set(FAMILIES) >= HELD_OUT_FAMILIES
    assert 14 <= len(HELD_OUT_FAMILIES) <= 18
    held = [FAMILIES[name] for name in HELD_OUT_FAMILIES]
    assert {f.action for f in held if f.kind == "single"} == {a.value for a in Action}
    assert any(f.kind == "multi" for f in held) and any(f.kind == "out_of_scope" for f in held)
    training = [f for name, f in FAMILIES.items() if name not in HELD_OUT_FAMILIES]
    assert {f.action for f in training if f.kind == "single"} == {a.value for a in Action}
    assert {k for f in training for k in [f.kind]} == {"single", "missing", "multi", "out_of_scope"}
    assert set(FAMILIES) - HELD_OUT_FAMILIES == gen.TRAINING_FAMILIES


def test_value_pools_are_canonical_and_known(canonicalizer: Canonicalizer) -> None:
    for chain in gen.CHAINS:
        assert canonicalizer.is_known_chain(canonicalizer.chain(chain)), chain
    for pool in gen.TOKEN_POOLS.values():
        for token in pool:
            assert canonicalizer.token(token)
    for pool in gen.PROTOCOL_POOLS.values():
        for protocol in pool:
            assert canonicalizer.protocol(protocol)
    assert canonicalizer.protocol("Aave v3") == "aave" and canonicalizer.protocol("Rocket Pool") == "rocketpool"
    rng = random.Random(0)
    amounts = [gen._amount(rng) for _ in range(2000)]
    for amount in amounts:
        assert re.fullmatch(r"\d+(\.\d+)?", canonicalizer.value("amount", amount)), amount
    notations = {"1,500": r"^\d{1,3}(,\d{3})+", ".5": r"^\.\d", "0,5": r"^\d,\d{1,2}$", "2.5k": r"[kKmM]$"}
    for name, pattern in notations.items():
        assert any(re.search(pattern, a) for a in amounts), name
    assert any(re.fullmatch(r"[a-z -]+", a) and " " in a for a in amounts)  # "twenty five", "one hundred and ..."
    addresses = [gen._address(rng) for _ in range(300)]
    assert any(a.endswith(".eth") for a in addresses)
    assert any(HEX.fullmatch(a) and a[2:] == a[2:].lower() for a in addresses)
    checksummed = [a for a in addresses if HEX.fullmatch(a) and a[2:] != a[2:].lower()]
    assert checksummed and all(eip55_checksum(a) == a and checksum_warning(a) is None for a in checksummed)


def test_template_syntax() -> None:
    nodes = gen._parse("(swap|trade) {qty} [over ]to {tok2}[ on {chain}]")
    assert gen._slots(nodes) == {"qty", "amt", "tok", "tok2", "chain"}
    assert gen._parse("{amt2=amt}") == (gen._Slot("amt2", "amt"),)
    with pytest.raises(ValueError):
        gen._parse("swap (a|b")
    with pytest.raises(ValueError):
        gen._parse("swap a]")
    tidy = gen._tidy([("swap  ", None), ("1", "amt"), (" ", None), ("eth", "tok"), ("  ?", None)])
    assert "".join(t for t, _ in tidy) == "swap 1 eth?"


# --------------------------------------------------------------------------- generation


def test_deterministic_for_a_seed(sample: list[Example], canonicalizer: Canonicalizer) -> None:
    again = generate_examples(800, 11, canonicalizer=canonicalizer)
    assert [e.to_dict() for e in again] == [e.to_dict() for e in sample]


def test_different_seeds_differ(sample: list[Example]) -> None:
    other = generate_examples(800, 12)
    assert len({key(e.prompt) for e in sample} & {key(e.prompt) for e in other}) < 100


def test_no_duplicates(sample: list[Example]) -> None:
    assert len(sample) == 800
    assert len({key(e.prompt) for e in sample}) == 800


def test_exclude_prompts_respected(sample: list[Example]) -> None:
    excluded = [e.prompt.upper().replace(" ", "  ") for e in sample[:300]]  # case and spacing ignored
    again = generate_examples(800, 11, exclude_prompts=iter(excluded))
    assert len(again) == 800
    assert not {key(p) for p in excluded} & {key(e.prompt) for e in again}


def test_every_action_and_kind_present(sample: list[Example]) -> None:
    actions = {intent.action for e in sample for intent in e.intents}
    assert actions == set(Action)
    kinds = Counter(FAMILIES[e.family].kind for e in sample)
    share = {kind: count / len(sample) for kind, count in kinds.items()}
    assert 0.62 < share["single"] < 0.82
    assert 0.07 < share["multi"] < 0.17
    assert 0.04 < share["out_of_scope"] < 0.12
    assert 0.04 < share["missing"] < 0.12
    families = Counter(e.family for e in sample)
    assert len(families) >= 55  # spread over (nearly) every family


def test_raw_values_verbatim_and_canonical(sample: list[Example], canonicalizer: Canonicalizer) -> None:
    for example in sample:
        check_example(example, canonicalizer)


def test_out_of_scope_and_missing_fields(sample: list[Example]) -> None:
    for example in sample:
        family = FAMILIES[example.family]
        if family.kind == "out_of_scope":
            assert example.intents == [] and example.raw == []
            assert parse_output(example_target(example)).intents == []
        else:
            assert [i.action for i in example.intents] == list(family.actions)
        if family.kind == "single":  # complete requests: every required field is stated
            assert not example.intents[0].missing(), example.prompt
        if family.kind == "missing":  # the variants that leave out a required field
            assert example.intents[0].missing(), example.prompt


def test_context_and_references_in_multi_intent(canonicalizer: Canonicalizer) -> None:
    families = ["multi_swap_bridge", "multi_supply_borrow", "multi_withdraw_transfer", "multi_swap_send"]
    for example in generate_examples(200, 3, families=families, canonicalizer=canonicalizer):
        first, second = example.intents
        if example.family == "multi_supply_borrow":  # protocol stated once, carried by both
            assert first.protocol and first.protocol == second.protocol
            assert first.chain == second.chain
        else:  # "... and bridge/send it": no amount, the token of the earlier step
            assert second.amount is None
            assert second.token1 == (first.token1 if example.family == "multi_withdraw_transfer" else first.token2)
            assert second.chain == first.chain


def test_noise_keeps_addresses_and_values(canonicalizer: Canonicalizer) -> None:
    examples = generate_examples(1500, 5, families=["transfer_send", "approve_address", "balance_of_address"])
    hexes = [e for e in examples if e.intents[0].address and HEX.fullmatch(e.intents[0].address)]
    assert any(e.intents[0].address != e.intents[0].address.lower() for e in hexes)  # checksummed ones
    for example in hexes:
        assert example.intents[0].address in example.prompt  # never re-cased, even in an ALL CAPS prompt
    without_hex = [HEX.sub("", e.prompt) for e in examples]
    assert any(p.isupper() for p in without_hex)
    assert any(p.islower() for p in without_hex)
    assert any("  " in p for p in without_hex)
    assert any(any(emoji in p for emoji in gen._EMOJIS) for p in without_hex)
    assert any(p.lower().startswith(("hey", "yo ", "pls", "please")) for p in without_hex)
    for example in examples:
        check_example(example, canonicalizer)


def test_family_filter(canonicalizer: Canonicalizer) -> None:
    examples = generate_examples(60, 1, families=["swap_basic", "oos_smalltalk"], canonicalizer=canonicalizer)
    assert {e.family for e in examples} == {"swap_basic", "oos_smalltalk"}
    held_out = generate_examples(200, 2, families=sorted(HELD_OUT_FAMILIES), canonicalizer=canonicalizer)
    assert {e.family for e in held_out} <= HELD_OUT_FAMILIES
    assert {i.action for e in held_out for i in e.intents} == set(Action)
    training = generate_examples(300, 2, families=sorted(gen.TRAINING_FAMILIES), canonicalizer=canonicalizer)
    assert not {e.family for e in training} & HELD_OUT_FAMILIES


def test_impossible_requests_raise() -> None:
    with pytest.raises(ValueError, match="could only generate"):
        generate_examples(5000, 0, families=["oos_smalltalk"])
    with pytest.raises(ValueError, match="unknown template families"):
        generate_examples(10, 0, families=["no_such_family"])
    with pytest.raises(ValueError):
        generate_examples(-1, 0)
    with pytest.raises(ValueError):
        generate_examples(10, 0, families=[])
    assert generate_examples(0, 0) == []


def test_fast_enough() -> None:
    start = time.perf_counter()
    examples = generate_examples(5000, 123)
    elapsed = time.perf_counter() - start
    assert len(examples) == 5000
    assert elapsed < 10, f"5000 examples took {elapsed:.1f} s"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_invariants_hold_for_any_seed(seed: int) -> None:
    canonicalizer = gen._default_canonicalizer()
    for example in generate_examples(40, seed, canonicalizer=canonicalizer):
        check_example(example, canonicalizer)


# --------------------------------------------------------------------------- held-out vocabulary

# Function words that carry no action vocabulary; everything else a held-out template says must
# also be said by some training template, so the held-out split tests unseen sentence structures
# rather than never-seen words.
STOPWORDS = frozenset(
    (
        "a", "an", "the", "to", "of", "for", "on", "in", "at", "by", "from", "with", "and", "or", "as", "my", "me",
        "i", "it", "its", "is", "are", "be", "been", "do", "does", "this", "that", "some", "there", "your", "you",
    )
)  # fmt: skip


def template_text(template: str) -> str:
    """A template with its shared phrases expanded and its slots removed."""
    template = re.sub(r"<(\w+)>", lambda m: gen.PHRASES[m.group(1)], template)
    return re.sub(r"\{[^}]*\}", " ", template)


def content_words(template: str) -> set[str]:
    text = template_text(template).lower()
    words = set(re.findall(r"->|[a-z0-9]+(?:'[a-z]+)?", text))
    return words - STOPWORDS


def expansions(template: str, limit: int = 256) -> set[str]:
    """Every text a template can produce (slots left as written), or {} when there are too many."""
    nodes = gen._parse(template)

    def walk(nodes: tuple) -> list[str]:
        outs = [""]
        for node in nodes:
            if isinstance(node, gen._Text):
                options = [node.text]
            elif isinstance(node, gen._Slot):
                options = ["{" + node.name + "}"]
            elif isinstance(node, gen._Choice):
                options = [text for option in node.options for text in walk(option)]
            else:
                options = ["", *walk(node.body)]
            outs = [a + b for a in outs for b in options]
            if len(outs) > limit:
                raise OverflowError
        return outs

    try:
        return {" ".join(text.split()) for text in walk(nodes)}
    except OverflowError:
        return set()


def training_families_like(family: Family) -> list[Family]:
    training = [FAMILIES[name] for name in sorted(gen.TRAINING_FAMILIES)]
    if family.kind in ("multi", "out_of_scope"):
        return [f for f in training if f.kind == family.kind]
    return [f for f in training if f.kind in ("single", "missing") and f.action == family.action]


def test_held_out_vocabulary_is_covered_in_training() -> None:
    uncovered = {}
    for name in sorted(HELD_OUT_FAMILIES):
        family = FAMILIES[name]
        known = set().union(*(content_words(t) for f in training_families_like(family) for t in f.templates))
        missing = set().union(*(content_words(t) for t in family.templates)) - known
        if missing:
            uncovered[name] = sorted(missing)
    assert not uncovered, f"held-out words never seen in training of the same action: {uncovered}"


def test_held_out_templates_are_not_in_training() -> None:
    training_texts: set[str] = set()
    training_raw: set[str] = set()
    for name in gen.TRAINING_FAMILIES:
        for template in FAMILIES[name].templates:
            training_raw.add(template)
            training_texts |= expansions(template)
    for name in HELD_OUT_FAMILIES:
        for template in FAMILIES[name].templates:
            assert template not in training_raw, (name, template)
            shared = expansions(template) & training_texts
            assert not shared, (name, template, sorted(shared)[:3])
