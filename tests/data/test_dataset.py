"""Integrity of the shipped dataset and of the splits built from it."""

import json
from collections import Counter

import pytest

from brianft.config import DataConfig
from brianft.data.dataset import (
    build_splits,
    curated_files,
    load_curated,
    row_to_example,
    to_dataset_dict,
)
from brianft.data.generate import HELD_OUT_FAMILIES
from brianft.data.io import normalized_prompt, validate_file
from brianft.normalize import Canonicalizer
from brianft.schema import Action
from brianft.target import example_target, parse_output


@pytest.fixture(scope="module")
def canonicalizer() -> Canonicalizer:
    return Canonicalizer.default()


@pytest.fixture(scope="module")
def curated(canonicalizer):
    return load_curated(canonicalizer)


@pytest.fixture(scope="module")
def splits(canonicalizer):
    return build_splits(DataConfig(synthetic_train=600, synthetic_test=120), canonicalizer)


@pytest.mark.parametrize("kind", ["curated", "written"])
def test_every_hand_labelled_file_validates_with_no_issue(canonicalizer, kind):
    assert curated_files(kind)
    for path in curated_files(kind):
        count, issues = validate_file(path, canonicalizer)
        assert [str(i) for i in issues if i.severity == "error"] == [], path
        assert count > 0


def test_curated_coverage_minimums(curated):
    assert len(curated) >= 600
    single_actions = Counter(e.intents[0].action for e in curated if len(e.intents) == 1)
    for action in Action:
        assert single_actions[action] >= 25, action
    assert sum(len(e.intents) > 1 for e in curated) >= 40
    assert sum(not e.intents for e in curated) >= 40
    assert sum(any(i.missing() for i in e.intents) for e in curated) >= 30


def test_curated_prompts_are_unique(curated):
    keys = [normalized_prompt(e.prompt) for e in curated]
    assert len(keys) == len(set(keys))


def test_written_coverage_minimums(canonicalizer):
    written = load_curated(canonicalizer, "written")
    assert len(written) >= 600
    actions = Counter(i.action for e in written for i in e.intents)
    for action in Action:
        assert actions[action] >= 15, action
    assert sum(len(e.intents) > 1 for e in written) >= 100
    assert sum(not e.intents for e in written) >= 40
    keys = [normalized_prompt(e.prompt) for e in written]
    assert len(keys) == len(set(keys))


def test_written_requests_train_and_validate_but_leave_test_as_it_was(canonicalizer, splits):
    without = build_splits(DataConfig(synthetic_train=600, synthetic_test=120, written=False), canonicalizer)
    assert without.test == splits.test
    assert not any(e.source == "written" for e in splits.test)
    assert [e for e in splits.train if e.source != "written"] == without.train
    assert [e for e in splits.validation if e.source != "written"] == without.validation
    assert any(e.source == "written" for e in splits.train)
    assert any(e.source == "written" for e in splits.validation)


def test_splits_share_no_prompt(splits):
    seen: dict[str, str] = {}
    for name, examples in splits.items():
        for example in examples:
            key = normalized_prompt(example.prompt)
            assert seen.setdefault(key, name) == name, f"{example.prompt!r} in {seen[key]} and {name}"
    assert all(examples for _, examples in splits.items())


def test_curated_data_lands_in_every_split(splits):
    for _, examples in splits.items():
        assert any(e.source == "curated" for e in examples)


def test_held_out_families_only_in_test(splits):
    for example in splits.train + splits.validation:
        assert example.family not in HELD_OUT_FAMILIES
    synthetic_test = [e for e in splits.test if e.source == "synthetic"]
    assert synthetic_test
    assert all(e.family in HELD_OUT_FAMILIES for e in synthetic_test)


def test_splits_are_deterministic(canonicalizer, splits):
    again = build_splits(DataConfig(synthetic_train=600, synthetic_test=120), canonicalizer)
    assert again.train == splits.train and again.test == splits.test


def test_raw_spans_occur_and_match_labels(splits, canonicalizer):
    grounded = total = 0
    for _, examples in splits.items():
        for example in examples:
            assert example.raw is not None and len(example.raw) == len(example.intents)
            for intent, raw in zip(example.intents, example.raw, strict=True):
                labels = intent.fields()
                total += len(labels)
                grounded += len(raw)
                for field, span in raw.items():
                    assert span in example.prompt
                    assert canonicalizer.value(field, span) == labels[field]
    assert grounded / total > 0.97


def test_target_round_trip_reproduces_every_label(splits, canonicalizer):
    """target -> parser -> canonicaliser gives back exactly the label of every example."""
    for _, examples in splits.items():
        for example in examples:
            parsed = parse_output(example_target(example))
            assert parsed.ok, (example.prompt, parsed.error)
            results = [canonicalizer.intent(raw) for raw in parsed.intents]
            assert all(not r.errors for r in results), example.prompt
            assert [r.intent for r in results] == example.intents, example.prompt


def test_dataset_dict_round_trip(splits):
    dataset = to_dataset_dict(splits)
    assert set(dataset) == {"train", "validation", "test"}
    assert len(dataset["train"]) == len(splits.train)
    assert row_to_example(dataset["test"][0]) == splits.test[0]


def test_user_files_are_converted_and_split(tmp_path, canonicalizer):
    rows = [
        {
            "prompt": f"send {n} usdc to friend{n}.eth on Base",
            "completion": {
                "action": "transfer",
                "token1": "usdc",
                "amount": str(n),
                "address": f"friend{n}.eth",
                "chain": "Base",
            },
        }
        for n in range(1, 41)
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DataConfig(curated=False, written=False, files=[path], synthetic_train=0, synthetic_test=0)
    splits = build_splits(config, canonicalizer)
    everything = splits.train + splits.validation + splits.test
    assert len(everything) == 40
    assert {e.source for e in everything} == {"user:mine.jsonl"}
    assert everything[0].intents[0].chain == "base"
    assert splits.train and splits.test


def test_corrupt_user_file_is_reported(tmp_path, canonicalizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x", "intents": [{"action": "swap", "amount": "lots"}]}\n')
    with pytest.raises(ValueError, match="line 1"):
        config = DataConfig(curated=False, written=False, files=[path], synthetic_train=0, synthetic_test=0)
        build_splits(config, canonicalizer)


def test_curated_repeat_weighs_hand_written_training_examples_only(canonicalizer, splits):
    config = DataConfig(synthetic_train=600, synthetic_test=120, curated_repeat=3)
    repeated = build_splits(config, canonicalizer)
    hand_written = [e for e in splits.train if e.source in ("curated", "written")]
    assert {e.source for e in hand_written} == {"curated", "written"}
    assert len(repeated.train) == len(splits.train) + 2 * len(hand_written)
    assert repeated.validation == splits.validation and repeated.test == splits.test
