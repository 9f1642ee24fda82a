"""Counts and length percentiles of a dataset, as a dict (for --json) and as rich tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

from brianft.schema import FIELDS, Action, Example


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(values)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}


def split_stats(examples: Iterable[Example]) -> dict:
    examples = list(examples)
    actions: Counter[str] = Counter()
    fields: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    multi = out_of_scope = with_missing = 0
    for example in examples:
        sources[example.source or "unknown"] += 1
        if not example.intents:
            out_of_scope += 1
        if len(example.intents) > 1:
            multi += 1
        if any(intent.missing() for intent in example.intents):
            with_missing += 1
        for intent in example.intents:
            actions[intent.action.value] += 1
            fields.update(intent.fields().keys())
    return {
        "examples": len(examples),
        "intents": sum(actions.values()),
        "multi_intent": multi,
        "out_of_scope": out_of_scope,
        "with_missing_field": with_missing,
        "actions": {a.value: actions.get(a.value, 0) for a in Action},
        "fields": {f: fields.get(f, 0) for f in FIELDS},
        "sources": dict(sorted(sources.items())),
        "prompt_chars": _percentiles([len(e.prompt) for e in examples]),
        "prompt_words": _percentiles([len(e.prompt.split()) for e in examples]),
    }


def dataset_stats(splits: Iterable[tuple[str, list[Example]]]) -> dict:
    return {name: split_stats(examples) for name, examples in splits}


def render_stats(stats: dict, console: Console) -> None:
    """Print per-split tables: totals, actions, fields, lengths."""
    names = list(stats)
    overview = Table(title="Dataset")
    overview.add_column("")
    for name in names:
        overview.add_column(name, justify="right")
    for key in ("examples", "intents", "multi_intent", "out_of_scope", "with_missing_field"):
        overview.add_row(key, *[str(stats[n][key]) for n in names])
    all_sources = sorted({s for n in names for s in stats[n]["sources"]})
    for source in all_sources:
        overview.add_row(f"source: {source}", *[str(stats[n]["sources"].get(source, 0)) for n in names])
    for measure in ("prompt_chars", "prompt_words"):
        for q in ("p50", "p90", "p99", "max"):
            overview.add_row(f"{measure} {q}", *[str(stats[n][measure][q]) for n in names])
    console.print(overview)
    for section in ("actions", "fields"):
        table = Table(title=f"Intents per {section[:-1]}")
        table.add_column(section[:-1])
        for name in names:
            table.add_column(name, justify="right")
        for key in stats[names[0]][section]:
            table.add_row(key, *[str(stats[n][section][key]) for n in names])
        console.print(table)
