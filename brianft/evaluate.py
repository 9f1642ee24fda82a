"""Metrics from real generations: predictions are parsed and canonicalised, then compared
with the labels. Nothing here uses teacher forcing (FINETUNING_NOTES pitfall 7)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from brianft.infer import Prediction
from brianft.schema import FIELDS, Action, Example


def actions_of(intents) -> list[str]:
    return [intent.action.value for intent in intents]


def is_exact(example: Example, prediction: Prediction) -> bool:
    """Whether the prediction is the example's canonical intent list, exactly."""
    return prediction.error is None and prediction.intents == example.intents


def score_predictions(examples: Sequence[Example], predictions: Sequence[Prediction]) -> dict[str, float]:
    """Exact match of the canonical intent lists, action-sequence accuracy, format validity."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    n = len(examples)
    if n == 0:
        return {"examples": 0, "exact_match": 0.0, "action_accuracy": 0.0, "format_validity": 0.0}
    exact = sum(is_exact(e, p) for e, p in zip(examples, predictions, strict=True))
    actions = sum(
        p.error is None and actions_of(p.intents) == actions_of(e.intents)
        for e, p in zip(examples, predictions, strict=True)
    )
    valid = sum(p.error is None for p in predictions)
    return {
        "examples": n,
        "exact_match": exact / n,
        "action_accuracy": actions / n,
        "format_validity": valid / n,
    }


# --------------------------------------------------------------------------- detailed metrics

NONE_ACTION = "none"  # the confusion-matrix label for an intent that is absent on one side


def _slots(intents) -> set[tuple[int, str, str]]:
    """(intent position, field, value) for every field set; 0x addresses compare case-insensitively,
    as the schema says."""
    out = set()
    for index, intent in enumerate(intents):
        for name, value in intent.fields().items():
            out.add((index, name, value.lower() if name == "address" else value))
    return out


def _prf(true_positives: int, predicted: int, expected: int) -> dict:
    """Precision, recall and F1; None where a ratio is 0/0 (nothing predicted, or nothing to find)."""
    return {
        "precision": true_positives / predicted if predicted else None,
        "recall": true_positives / expected if expected else None,
        "f1": 2 * true_positives / (predicted + expected) if predicted + expected else None,
        "true_positives": true_positives,
        "predicted": predicted,
        "expected": expected,
    }


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def detailed_metrics(
    examples: Sequence[Example],
    predictions: Sequence[Prediction],
    latencies_s: Sequence[float] | None = None,
) -> dict:
    """Everything the reports show, from real predictions. Keys:

    - examples, exact_match, action_accuracy, format_validity: as `score_predictions`;
    - slots: precision/recall/F1 of (intent position, field, value) triples, intents aligned by
      position; `overall` and one entry per field in `fields` (a prediction that failed to parse
      predicts no slot);
    - out_of_scope: on examples labelled []: `accuracy` (predicted [] without error) and
      `false_positive_rate` (predicted at least one intent); `missed_rate` is the converse on
      in-scope examples (predicted [] for a wallet request);
    - multi_intent: exact match on examples with more than one intent;
    - missing_fields: on examples where some labelled intent lacks a required field, the share
      whose predicted intents list the same `missing()` fields, intent by intent;
    - confusion: `labels` and `matrix[expected][predicted]` counts of actions, per aligned intent,
      with "none" for an intent absent on one side;
    - latency (when `latencies_s` is given): p50_s, p95_s, mean_s, max_s;
    - failures: every example that is not an exact match, with prompt, expected, got and error.

    Ratios over an empty subset are None.
    """
    scores = score_predictions(examples, predictions)
    if latencies_s is not None and len(latencies_s) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(latencies_s)} latencies")
    slot_counts: dict[str, list[int]] = {name: [0, 0, 0] for name in FIELDS}  # tp, predicted, expected
    out_of_scope = {"examples": 0, "correct": 0, "false_positives": 0}
    in_scope = {"examples": 0, "missed": 0}
    multi = {"examples": 0, "exact": 0}
    missing = {"examples": 0, "correct": 0}
    confusion: dict[tuple[str, str], int] = {}
    failures = []
    for example, prediction in zip(examples, predictions, strict=True):
        got = [] if prediction.error is not None else prediction.intents
        exact = is_exact(example, prediction)
        expected_slots, predicted_slots = _slots(example.intents), _slots(got)
        for name in FIELDS:
            counts = slot_counts[name]
            counts[0] += sum(1 for s in expected_slots & predicted_slots if s[1] == name)
            counts[1] += sum(1 for s in predicted_slots if s[1] == name)
            counts[2] += sum(1 for s in expected_slots if s[1] == name)
        if not example.intents:
            out_of_scope["examples"] += 1
            out_of_scope["correct"] += prediction.error is None and not got
            out_of_scope["false_positives"] += bool(got)
        else:
            in_scope["examples"] += 1
            in_scope["missed"] += prediction.error is None and not got
        if len(example.intents) > 1:
            multi["examples"] += 1
            multi["exact"] += exact
        if any(intent.missing() for intent in example.intents):
            missing["examples"] += 1
            missing["correct"] += prediction.error is None and [i.missing() for i in got] == [
                i.missing() for i in example.intents
            ]
        for position in range(max(len(example.intents), len(got))):
            pair = (
                example.intents[position].action.value if position < len(example.intents) else NONE_ACTION,
                got[position].action.value if position < len(got) else NONE_ACTION,
            )
            confusion[pair] = confusion.get(pair, 0) + 1
        if not exact:
            failures.append(failure_record(example, prediction))
    total = [sum(c[k] for c in slot_counts.values()) for k in range(3)]
    metrics: dict = {
        **scores,
        "slots": {
            "overall": _prf(*total),
            "fields": {name: _prf(*counts) for name, counts in slot_counts.items()},
        },
        "out_of_scope": {
            "examples": out_of_scope["examples"],
            "accuracy": _share(out_of_scope["correct"], out_of_scope["examples"]),
            "false_positive_rate": _share(out_of_scope["false_positives"], out_of_scope["examples"]),
            "missed_rate": _share(in_scope["missed"], in_scope["examples"]),
        },
        "multi_intent": {"examples": multi["examples"], "exact_match": _share(multi["exact"], multi["examples"])},
        "missing_fields": {
            "examples": missing["examples"],
            "accuracy": _share(missing["correct"], missing["examples"]),
        },
        "confusion": _confusion_table(confusion),
        "failures": failures,
    }
    if latencies_s is not None:
        metrics["latency"] = (
            {
                "p50_s": percentile(latencies_s, 50),
                "p95_s": percentile(latencies_s, 95),
                "mean_s": sum(latencies_s) / len(latencies_s),
                "max_s": max(latencies_s),
            }
            if latencies_s
            else {"p50_s": None, "p95_s": None, "mean_s": None, "max_s": None}
        )
    return metrics


def failure_record(example: Example, prediction: Prediction) -> dict:
    """A request the prediction got wrong: prompt, expected and got intents, error."""
    return {
        "prompt": example.prompt,
        "expected": [i.to_dict() for i in example.intents],
        "got": None if prediction.error is not None else [i.to_dict() for i in prediction.intents],
        "error": prediction.error,
    }


def failures_table(failures: Sequence[dict]) -> str:
    """`failure_record`s as a markdown table (request, expected, got), or "No failures."."""
    if not failures:
        return "No failures."
    lines = ["| request | expected | got |", "|---|---|---|"]
    for failure in failures:
        got = failure["error"] if failure["error"] is not None else json.dumps(failure["got"])
        expected = json.dumps(failure["expected"])
        lines.append(f"| {_escape(failure['prompt'])} | `{_escape(expected)}` | `{_escape(got)}` |")
    return "\n".join(lines)


def _confusion_table(counts: dict[tuple[str, str], int]) -> dict:
    """Labels in schema order (only those that occur) then "none"; matrix[expected][predicted]."""
    seen = {label for pair in counts for label in pair}
    labels = [a.value for a in Action if a.value in seen] + ([NONE_ACTION] if NONE_ACTION in seen else [])
    matrix = [[counts.get((expected, got), 0) for got in labels] for expected in labels]
    return {"labels": labels, "matrix": matrix}


# --------------------------------------------------------------------------- reports

# (row title, path into the metrics) of the headline numbers, in report and comparison order.
SUMMARY_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("examples", ("examples",)),
    ("exact match", ("exact_match",)),
    ("action accuracy", ("action_accuracy",)),
    ("format validity", ("format_validity",)),
    ("slot precision", ("slots", "overall", "precision")),
    ("slot recall", ("slots", "overall", "recall")),
    ("slot F1", ("slots", "overall", "f1")),
    ("out-of-scope accuracy", ("out_of_scope", "accuracy")),
    ("out-of-scope false-positive rate", ("out_of_scope", "false_positive_rate")),
    ("in-scope missed rate", ("out_of_scope", "missed_rate")),
    ("multi-intent exact match", ("multi_intent", "exact_match")),
    ("missing-field accuracy", ("missing_fields", "accuracy")),
    ("latency p50 (s)", ("latency", "p50_s")),
    ("latency p95 (s)", ("latency", "p95_s")),
    ("latency mean (s)", ("latency", "mean_s")),
)


def _lookup(metrics: dict, path: tuple[str, ...]):
    value = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 0.01 and value else f"{value:.3f}"
    return str(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def comparison_table(named_metrics: dict[str, dict]) -> str:
    """A markdown table of headline metrics: one row per metric, one column per system.
    Rows no system has (latency without timings) are left out."""
    names = list(named_metrics)
    lines = [
        "| metric | " + " | ".join(_escape(n) for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for title, path in SUMMARY_ROWS:
        values = [_lookup(named_metrics[name], path) for name in names]
        if all(v is None for v in values):
            continue
        lines.append(f"| {title} | " + " | ".join(_cell(v) for v in values) + " |")
    return "\n".join(lines)


def write_report(metrics: dict, out_dir: Path, title: str, *, failure_limit: int = 100) -> None:
    """metrics.json, report.md (tables and the first `failure_limit` failures) and
    confusion_matrix.png in `out_dir` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(_report_markdown(metrics, title, failure_limit), encoding="utf-8")
    plot_confusion(metrics.get("confusion", {"labels": [], "matrix": []}), out_dir / "confusion_matrix.png", title)


def _report_markdown(metrics: dict, title: str, failure_limit: int) -> str:
    parts = [f"# {title}\n", "## Summary\n", comparison_table({"value": metrics})]
    slots = metrics.get("slots")
    if slots:
        rows = [("overall", slots["overall"])] + list(slots["fields"].items())
        lines = ["| field | precision | recall | F1 | expected | predicted |", "|---|---|---|---|---|---|"]
        for name, s in rows:
            cells = " | ".join(_cell(s[k]) for k in ("precision", "recall", "f1", "expected", "predicted"))
            lines.append(f"| {name} | {cells} |")
        parts += ["\n## Slots\n", "A slot is (intent position, field, value); intents are aligned by position.\n"]
        parts.append("\n".join(lines))
    subsets = [
        ("out of scope (label [])", metrics.get("out_of_scope", {}).get("examples")),
        ("multi-intent", metrics.get("multi_intent", {}).get("examples")),
        ("with missing fields", metrics.get("missing_fields", {}).get("examples")),
    ]
    parts += ["\n## Subsets\n", "| subset | examples |", "|---|---|"]
    parts += [f"| {name} | {_cell(count)} |" for name, count in subsets]
    confusion = metrics.get("confusion")
    if confusion and confusion["labels"]:
        labels = confusion["labels"]
        lines = ["| expected \\ predicted | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for label, row in zip(labels, confusion["matrix"], strict=True):
            lines.append(f"| {label} | " + " | ".join(str(c) if c else "·" for c in row) + " |")
        parts += ["\n## Action confusion\n", "Per aligned intent; `none`: no intent at that position.\n"]
        parts += ["\n".join(lines), "\n![confusion matrix](confusion_matrix.png)"]
    failures = metrics.get("failures", [])
    parts.append(f"\n## Failures ({len(failures)}, first {min(len(failures), failure_limit)} shown)\n")
    parts.append(failures_table(failures[:failure_limit]))
    return "\n".join(parts) + "\n"


def plot_confusion(confusion: dict, path: Path, title: str) -> None:
    """The action confusion matrix as a heatmap with counts in the cells (Agg backend, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = confusion.get("labels", [])
    matrix = confusion.get("matrix", [])
    size = max(4.0, 0.55 * len(labels) + 2.5)
    fig, axis = plt.subplots(figsize=(size + 1.0, size))
    if labels:
        image = axis.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        axis.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right", rotation_mode="anchor")
        axis.set_yticks(range(len(labels)), labels=labels)
        peak = max((c for row in matrix for c in row), default=0)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    color = "white" if count > peak / 2 else "black"
                    axis.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
        axis.set_xlabel("predicted action")
        axis.set_ylabel("expected action")
    else:
        axis.text(0.5, 0.5, "no intents", ha="center", va="center")
        axis.set_axis_off()
    axis.set_title(f"{title}: actions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
