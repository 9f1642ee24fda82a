"""Assemble the train / validation / test splits from curated, written, user and synthetic examples.

Guarantees: no prompt (case and spacing ignored) is in two splits; the synthetic test part
comes only from template families held out of training, so it measures generalisation to
unseen phrasings; every example carries its raw spans for copy-style targets.

The "written" requests were added after the test split was fixed, by writers shown only the
intent schema (neither the templates nor the test requests). They go to training and
validation only: hashing them into test too would change the test split's make-up, and its
figures would stop being comparable with earlier versions'.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from datasets import Dataset, DatasetDict

from brianft.config import DataConfig
from brianft.data.generate import FAMILIES, HELD_OUT_FAMILIES, generate_examples
from brianft.data.io import normalized_prompt, read_examples
from brianft.data.spans import SpanFinder
from brianft.normalize import Canonicalizer, Registry
from brianft.schema import Example, Intent

SPLITS = ("train", "validation", "test")
HAND_WRITTEN = ("curated", "written")


@dataclass
class Splits:
    train: list[Example] = field(default_factory=list)
    validation: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    dropped_duplicates: list[str] = field(default_factory=list)

    def items(self) -> list[tuple[str, list[Example]]]:
        return [(name, getattr(self, name)) for name in SPLITS]


def curated_files(kind: str = "curated") -> list[Path]:
    """The shipped hand-labelled files of one kind: "curated" or "written" (see the module doc)."""
    folder = resources.files("brianft") / "resources" / "data" / kind
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".jsonl"))


def load_curated(canonicalizer: Canonicalizer, kind: str = "curated") -> list[Example]:
    """The hand-labelled examples shipped with the package; they must already be canonical."""
    examples = []
    for path in curated_files(kind):
        for example in read_examples(path, canonicalizer, mode="validate"):
            examples.append(example.model_copy(update={"source": kind}))
    return examples


def _bucket(prompt: str, salt: str) -> float:
    """A stable number in [0, 1) per prompt: the same request always lands in the same split."""
    digest = hashlib.sha256(f"{salt}:{normalized_prompt(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_hash(
    examples: list[Example], validation_fraction: float, test_fraction: float, salt: str
) -> tuple[list[Example], list[Example], list[Example]]:
    train, validation, test = [], [], []
    for example in examples:
        b = _bucket(example.prompt, salt)
        if b < test_fraction:
            test.append(example)
        elif b < test_fraction + validation_fraction:
            validation.append(example)
        else:
            train.append(example)
    return train, validation, test


def build_splits(config: DataConfig, canonicalizer: Canonicalizer) -> Splits:
    """All examples of the configured sources, split without any prompt shared between splits."""
    splits = Splits()
    seen: set[str] = set()

    def keep(example: Example) -> bool:
        key = normalized_prompt(example.prompt)
        if key in seen:
            splits.dropped_duplicates.append(example.prompt)
            return False
        seen.add(key)
        return True

    labelled = load_curated(canonicalizer) if config.curated else []
    for path in config.files:
        user = read_examples(path, canonicalizer, mode="canonicalize", max_prompt_chars=config.max_prompt_chars)
        labelled += [e.model_copy(update={"source": e.source or f"user:{Path(path).name}"}) for e in user]
    labelled = [e for e in labelled if keep(e)]
    train, validation, test = split_by_hash(
        labelled, config.validation_fraction, config.test_fraction, salt=f"labelled-{config.seed}"
    )

    # Requests of the training template families and the written ones: train and validation only.
    def add_to_train_and_validation(examples: list[Example], salt: str) -> None:
        kept = [e for e in examples if keep(e)]
        to_train, to_validation, _ = split_by_hash(kept, config.validation_fraction, 0.0, f"{salt}-{config.seed}")
        train.extend(to_train)
        validation.extend(to_validation)

    training_families = [name for name in FAMILIES if name not in HELD_OUT_FAMILIES]
    if config.synthetic_train:
        synthetic = generate_examples(
            config.synthetic_train,
            config.seed,
            exclude_prompts=seen,
            families=training_families,
            canonicalizer=canonicalizer,
        )
        add_to_train_and_validation(synthetic, "synthetic")
    if config.synthetic_test:
        held_out = generate_examples(
            config.synthetic_test,
            config.seed + 1,
            exclude_prompts=seen,
            families=sorted(HELD_OUT_FAMILIES),
            canonicalizer=canonicalizer,
        )
        test += [e for e in held_out if keep(e)]
    # Loaded last, so that every other split is the same with or without them; a written
    # request equal to one already placed is dropped here.
    if config.written:
        add_to_train_and_validation(load_curated(canonicalizer, "written"), "written")
    # Hand-written requests carry the phrasing variety templates lack; repeating them weighs
    # them more without letting any prompt cross into another split.
    train += [e for e in train if e.source in HAND_WRITTEN] * (config.curated_repeat - 1)
    finder = SpanFinder(canonicalizer)
    splits.train = [finder.with_raw(e) for e in train]
    splits.validation = [finder.with_raw(e) for e in validation]
    splits.test = [finder.with_raw(e) for e in test]
    return splits


def example_to_row(example: Example) -> dict[str, str]:
    return {
        "prompt": example.prompt,
        "intents": json.dumps([i.to_dict() for i in example.intents], ensure_ascii=False),
        "raw": json.dumps(example.raw, ensure_ascii=False) if example.raw is not None else "",
        "source": example.source or "",
        "family": example.family or "",
    }


def row_to_example(row: dict) -> Example:
    return Example(
        prompt=row["prompt"],
        intents=[Intent(**i) for i in json.loads(row["intents"])],
        raw=json.loads(row["raw"]) if row.get("raw") else None,
        source=row.get("source") or None,
        family=row.get("family") or None,
    )


def to_dataset_dict(splits: Splits) -> DatasetDict:
    """The splits as a `datasets.DatasetDict` (intents and raw spans as JSON strings)."""
    columns = ("prompt", "intents", "raw", "source", "family")
    return DatasetDict(
        {
            name: Dataset.from_dict({c: [example_to_row(e)[c] for e in examples] for c in columns})
            for name, examples in splits.items()
        }
    )


def load_dataset_dict(config: DataConfig, canonicalizer: Canonicalizer | None = None) -> DatasetDict:
    canonicalizer = canonicalizer or Canonicalizer(Registry.load(config.registry_dirs))
    return to_dataset_dict(build_splits(config, canonicalizer))
