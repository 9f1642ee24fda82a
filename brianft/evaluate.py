"""Metrics from real generations: predictions are parsed and canonicalised, then compared
with the labels. Nothing here uses teacher forcing (FINETUNING_NOTES pitfall 7)."""

from __future__ import annotations

from collections.abc import Sequence

from brianft.infer import Prediction
from brianft.schema import Example


def actions_of(intents) -> list[str]:
    return [intent.action.value for intent in intents]


def score_predictions(examples: Sequence[Example], predictions: Sequence[Prediction]) -> dict[str, float]:
    """Exact match of the canonical intent lists, action-sequence accuracy, format validity."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    n = len(examples)
    if n == 0:
        return {"examples": 0, "exact_match": 0.0, "action_accuracy": 0.0, "format_validity": 0.0}
    exact = sum(p.error is None and p.intents == e.intents for e, p in zip(examples, predictions, strict=True))
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
