"""Metrics on hand-built predictions whose values are worked out by hand in the comments."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from brianft.evaluate import comparison_table, detailed_metrics, percentile, score_predictions, write_report
from brianft.infer import Prediction
from brianft.schema import Example, Intent


def _intent(action: str, **fields: str) -> Intent:
    return Intent(action=action, **fields)


def _ok(*intents: Intent) -> Prediction:
    return Prediction(text="", intents=list(intents))


SWAP = _intent("swap", token1="ETH", token2="USDC", amount="1", chain="base")
TRANSFER = _intent("transfer", token1="DAI", amount="5", address="bob.eth")
SWAP_DAI = _intent("swap", token1="DAI", token2="USDC", amount="100")
SEND_IT = _intent("transfer", token1="USDC", address="bob.eth")  # lacks amount
WRAP = _intent("wrap", token1="ETH", amount="1")
DEPOSIT_IT = _intent("deposit", token1="WETH", protocol="aave")  # lacks amount
BRIDGE = _intent("bridge", token1="ETH", amount="1", dest_chain="base")

# (example, prediction), eight cases:
CASES = [
    # 1 exact
    (Example(prompt="swap 1 eth for usdc on base", intents=[SWAP]), _ok(SWAP)),
    # 2 wrong amount: 3 slots expected, 3 predicted, 2 right
    (
        Example(prompt="send 5 dai to bob.eth", intents=[TRANSFER]),
        _ok(_intent("transfer", token1="DAI", amount="50", address="bob.eth")),
    ),
    # 3 out of scope, rightly empty
    (Example(prompt="what is a rollup", intents=[]), _ok()),
    # 4 out of scope, but an intent (no slots): a false positive
    (Example(prompt="gm", intents=[]), _ok(_intent("balance"))),
    # 5 two intents, the second one missed: 5 slots expected, 3 predicted and right
    (Example(prompt="swap 100 dai for usdc and send it to bob.eth", intents=[SWAP_DAI, SEND_IT]), _ok(SWAP_DAI)),
    # 6 two intents, exact (and the deposit lacks its amount in both)
    (Example(prompt="wrap 1 eth and deposit it into aave", intents=[WRAP, DEPOSIT_IT]), _ok(WRAP, DEPOSIT_IT)),
    # 7 unreadable output: format error, no slot predicted
    (Example(prompt="bridge 1 eth to base", intents=[BRIDGE]), Prediction(text="bridge;;", error="malformed")),
    # 8 wrong action, token right: 2 expected, 1 predicted and right (slots ignore the action)
    (Example(prompt="send usdc to bob.eth", intents=[SEND_IT]), _ok(_intent("swap", token1="USDC"))),
]
EXAMPLES = [example for example, _ in CASES]
PREDICTIONS = [prediction for _, prediction in CASES]
LATENCIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


@pytest.fixture(scope="module")
def metrics() -> dict:
    return detailed_metrics(EXAMPLES, PREDICTIONS, LATENCIES)


def test_headline_scores_match_score_predictions(metrics: dict) -> None:
    assert metrics["examples"] == 8
    assert metrics["exact_match"] == pytest.approx(3 / 8)  # cases 1, 3, 6
    assert metrics["action_accuracy"] == pytest.approx(4 / 8)  # cases 1, 2, 3, 6
    assert metrics["format_validity"] == pytest.approx(7 / 8)
    assert score_predictions(EXAMPLES, PREDICTIONS) == {
        "examples": 8,
        "exact_match": 3 / 8,
        "action_accuracy": 4 / 8,
        "format_validity": 7 / 8,
    }


def test_slot_precision_recall_f1(metrics: dict) -> None:
    overall = metrics["slots"]["overall"]
    # true positives 4+2+3+4+1 = 14; predicted 4+3+3+4+1 = 15; expected 4+3+5+4+3+2 = 21
    assert (overall["true_positives"], overall["predicted"], overall["expected"]) == (14, 15, 21)
    assert overall["precision"] == pytest.approx(14 / 15)
    assert overall["recall"] == pytest.approx(2 / 3)
    assert overall["f1"] == pytest.approx(float(Fraction(2 * 14, 15 + 21)))  # = 7/9
    fields = metrics["slots"]["fields"]
    # token1: expected 8 (1, 2, 5x2, 6x2, 7, 8), predicted 6 (7 has none, 5 lost one), all right
    assert (fields["token1"]["precision"], fields["token1"]["recall"]) == (1.0, 0.75)
    assert fields["token1"]["f1"] == pytest.approx(6 / 7)
    # amount: expected 5 (1, 2, 5, 6, 7), predicted 4 (1, 2 wrong, 5, 6)
    assert fields["amount"]["precision"] == pytest.approx(3 / 4)
    assert fields["amount"]["recall"] == pytest.approx(3 / 5)
    assert fields["amount"]["f1"] == pytest.approx(2 / 3)
    # address: expected in 2, 5, 8; predicted only in 2
    assert (fields["address"]["precision"], fields["address"]["recall"], fields["address"]["f1"]) == (1.0, 1 / 3, 0.5)
    # dest_chain: expected once, never predicted: precision is undefined, recall and F1 are 0
    assert (fields["dest_chain"]["precision"], fields["dest_chain"]["recall"], fields["dest_chain"]["f1"]) == (
        None,
        0.0,
        0.0,
    )
    # amount_out never occurs on either side
    assert fields["amount_out"] == {
        "precision": None,
        "recall": None,
        "f1": None,
        "true_positives": 0,
        "predicted": 0,
        "expected": 0,
    }
    for name in ("token2", "chain", "protocol"):
        assert fields[name]["f1"] == 1.0


def test_out_of_scope_multi_intent_and_missing_fields(metrics: dict) -> None:
    assert metrics["out_of_scope"] == {
        "examples": 2,  # cases 3 and 4
        "accuracy": 0.5,
        "false_positive_rate": 0.5,
        "missed_rate": 0.0,  # no in-scope request predicted as []; case 7 is an error, not a miss
    }
    assert metrics["multi_intent"] == {"examples": 2, "exact_match": 0.5}  # cases 5 and 6
    # cases 5, 6 and 8 have an intent that lacks a required field; only case 6 lists the same ones
    assert metrics["missing_fields"]["examples"] == 3
    assert metrics["missing_fields"]["accuracy"] == pytest.approx(1 / 3)


def test_confusion_matrix_counts(metrics: dict) -> None:
    confusion = metrics["confusion"]
    assert confusion["labels"] == ["swap", "bridge", "transfer", "balance", "wrap", "deposit", "none"]
    cells = {
        (expected, got): count
        for expected, row in zip(confusion["labels"], confusion["matrix"], strict=True)
        for got, count in zip(confusion["labels"], row, strict=True)
        if count
    }
    assert cells == {
        ("swap", "swap"): 2,  # cases 1 and 5
        ("transfer", "transfer"): 1,  # case 2
        ("none", "balance"): 1,  # case 4
        ("transfer", "none"): 1,  # case 5, second intent
        ("wrap", "wrap"): 1,
        ("deposit", "deposit"): 1,
        ("bridge", "none"): 1,  # case 7: an error predicts nothing
        ("transfer", "swap"): 1,  # case 8
    }


def test_latency_percentiles(metrics: dict) -> None:
    latency = metrics["latency"]
    assert latency["p50_s"] == pytest.approx(0.45)  # halfway between 0.4 and 0.5
    assert latency["p95_s"] == pytest.approx(0.765)  # rank 6.65: 0.7 + 0.65 * 0.1
    assert latency["mean_s"] == pytest.approx(0.45)
    assert latency["max_s"] == pytest.approx(0.8)
    assert percentile([3.0], 95) == 3.0
    assert "latency" not in detailed_metrics(EXAMPLES, PREDICTIONS)
    with pytest.raises(ValueError, match="latencies"):
        detailed_metrics(EXAMPLES, PREDICTIONS, [0.1])


def test_failures_list_every_inexact_example(metrics: dict) -> None:
    failures = metrics["failures"]
    assert [f["prompt"] for f in failures] == [EXAMPLES[i].prompt for i in (1, 3, 4, 6, 7)]
    unreadable = failures[3]
    assert unreadable["got"] is None and unreadable["error"] == "malformed"
    assert unreadable["expected"] == [BRIDGE.to_dict()]
    assert failures[0]["got"] == [{"action": "transfer", "token1": "DAI", "amount": "50", "address": "bob.eth"}]


def test_addresses_match_case_insensitively_as_slots() -> None:
    address = "0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045"
    example = Example(prompt="send 1 eth", intents=[_intent("transfer", token1="ETH", amount="1", address=address)])
    prediction = _ok(_intent("transfer", token1="ETH", amount="1", address=address.lower()))
    metrics = detailed_metrics([example], [prediction])
    assert metrics["slots"]["fields"]["address"]["true_positives"] == 1
    assert metrics["exact_match"] == 0.0  # exact match compares the intents as they are


def test_no_examples() -> None:
    metrics = detailed_metrics([], [], [])
    assert metrics["examples"] == 0 and metrics["exact_match"] == 0.0
    assert metrics["slots"]["overall"]["f1"] is None
    assert metrics["out_of_scope"]["accuracy"] is None
    assert metrics["confusion"] == {"labels": [], "matrix": []}
    assert metrics["latency"]["p50_s"] is None
    assert metrics["failures"] == []


def test_comparison_table() -> None:
    table = comparison_table({"rules": {"examples": 4, "exact_match": 0.5}, "lora": {"exact_match": 0.75}})
    lines = table.splitlines()
    assert lines[0] == "| metric | rules | lora |"
    assert "| examples | 4 | n/a |" in lines
    assert "| exact match | 0.500 | 0.750 |" in lines
    assert not any("latency" in line for line in lines)  # no system has timings


def test_write_report(tmp_path, metrics: dict) -> None:
    write_report(metrics, tmp_path / "report", "rules | test")
    out = tmp_path / "report"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    report = (out / "report.md").read_text()
    assert report.startswith("# rules | test")
    assert "| exact match | 0.375 |" in report
    assert "gm" in report and "malformed" in report  # failures, with the error of case 7
    # the confusion row of transfer: -> swap (case 8), -> transfer (case 2), -> none (case 5)
    assert "| transfer | 1 | · | 1 | · | · | · | 1 |" in report
    png = (out / "confusion_matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_write_report_without_intents(tmp_path) -> None:
    metrics = detailed_metrics([Example(prompt="gm", intents=[])], [_ok()])
    write_report(metrics, tmp_path, "empty")
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    assert "No failures." in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    ("name", "size", "out_of_scope"),
    [("fresh", 120, 20), ("dev", 250, 25), ("dev2", 229, 27), ("dev3", 171, 20), ("dev4", 197, 25)],
)
def test_hand_written_evaluation_sets_are_canonical_and_cover_every_action(name, size, out_of_scope):
    """benchmarks/data/{fresh,dev,dev2,dev3,dev4}_requests.jsonl: requests labelled by sessions that saw only the
    schema (benchmarks/data/README.md). They must stay readable as canonical labelled data."""
    from pathlib import Path

    from brianft.data.io import read_examples
    from brianft.normalize import Canonicalizer
    from brianft.schema import Action

    path = Path(__file__).parent.parent / "benchmarks" / "data" / f"{name}_requests.jsonl"
    examples = read_examples(path, Canonicalizer.default(), mode="validate")
    assert len(examples) == size
    assert {intent.action for example in examples for intent in example.intents} == set(Action)
    assert sum(not example.intents for example in examples) == out_of_scope


def test_hand_labelled_training_requests_leave_the_evaluation_sets_out_of_sample():
    from pathlib import Path

    from brianft.data.dataset import load_curated
    from brianft.data.io import normalized_prompt, read_examples
    from brianft.normalize import Canonicalizer

    canonicalizer = Canonicalizer.default()
    written = {normalized_prompt(e.prompt) for e in load_curated(canonicalizer, "written")}
    curated = {normalized_prompt(e.prompt) for e in load_curated(canonicalizer, "curated")}
    evaluation_sets = []
    for name in ("fresh", "dev", "dev2", "dev3", "dev4"):
        path = Path(__file__).parent.parent / "benchmarks" / "data" / f"{name}_requests.jsonl"
        prompts = {normalized_prompt(e.prompt) for e in read_examples(path, canonicalizer)}
        assert not written & prompts
        evaluation_sets.append(prompts)
    # dev2 was also kept apart from the curated requests and the other two sets (fresh and dev
    # share a few short requests with the curated set, such as "swap 1 eth for usdc").
    assert not evaluation_sets[2] & (curated | evaluation_sets[0] | evaluation_sets[1])
    # dev3 and dev4 too, and from every set before them
    for later in (3, 4):
        assert not evaluation_sets[later] & (curated | set().union(*evaluation_sets[:later]))


def test_failures_table_escapes_cells_and_shows_the_error_or_the_intents() -> None:
    from brianft.evaluate import failure_record, failures_table, is_exact

    wrong = Example(prompt="swap 1 eth | usdc", intents=[SWAP])
    broken = Example(prompt="send 5 dai\nto bob.eth", intents=[TRANSFER])
    predictions = [_ok(SWAP_DAI), Prediction(text="?", error="malformed output")]
    assert not any(is_exact(e, p) for e, p in zip([wrong, broken], predictions, strict=True))
    assert is_exact(wrong, _ok(SWAP))
    table = failures_table([failure_record(e, p) for e, p in zip([wrong, broken], predictions, strict=True)])
    header, rule, first, second = table.split("\n")
    assert header == "| request | expected | got |" and rule == "|---|---|---|"
    assert first.startswith("| swap 1 eth \\| usdc | `") and '"token1": "DAI"' in first
    assert second.startswith("| send 5 dai to bob.eth | `") and second.endswith("| `malformed output` |")
    assert failures_table([]) == "No failures."
