"""Reading, checking and writing labelled data files.

Accepted inputs: JSONL lines `{"prompt", "intents": [...]}` (our format), Brian's
`{"prompt", "completion": {...} | [...]}`, and CSV with a `prompt` column and an `intents`
or `completion` column holding JSON. Every problem is reported with its line number;
nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from brianft.normalize import Canonicalizer
from brianft.schema import Example

DEFAULT_MAX_PROMPT_CHARS = 1000

Mode = Literal["validate", "canonicalize"]


@dataclass(frozen=True)
class LineIssue:
    line: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"line {self.line}: {self.severity}: {self.message}"


class DataFileError(ValueError):
    """A data file with bad lines; `issues` lists each one with its line number."""

    def __init__(self, path: Path, issues: list[LineIssue]) -> None:
        self.path = path
        self.issues = issues
        shown = "\n".join(f"  {issue}" for issue in issues[:20])
        more = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
        super().__init__(f"{path}: {len(issues)} problem(s)\n{shown}{more}")


def normalized_prompt(prompt: str) -> str:
    """The key under which two prompts count as the same request (case and spacing ignored)."""
    return " ".join(prompt.lower().split())


def iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded record) for every non-blank line; undecodable lines yield a LineIssue."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix.lower() == ".csv":
        yield from _iter_csv(path)
        return
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, LineIssue(number, f"not valid JSON: {exc.msg} (column {exc.colno})")
        except UnicodeDecodeError as exc:
            raise DataFileError(path, [LineIssue(0, f"file is not UTF-8 text: {exc}")]) from exc


def _iter_csv(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        label_column = next((c for c in ("intents", "completion") if c in columns), None)
        if "prompt" not in columns or label_column is None:
            issue = LineIssue(1, "CSV needs a 'prompt' column and an 'intents' or 'completion' column")
            yield 1, issue
            return
        for row in reader:
            number = reader.line_num
            try:
                labels = json.loads(row[label_column] or "null")
            except json.JSONDecodeError as exc:
                yield number, LineIssue(number, f"column {label_column!r} is not valid JSON: {exc.msg}")
                continue
            yield number, {"prompt": row["prompt"], label_column: labels}


def check_record(
    number: int,
    record: Any,
    canonicalizer: Canonicalizer,
    *,
    mode: Mode,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
) -> tuple[Example | None, list[LineIssue]]:
    """Turn one decoded record into an Example, with every problem found.

    `validate` demands labels already canonical and strings only; `canonicalize` accepts raw
    values ("Arbitrum One", "1,500") and returns them canonical.
    """
    if isinstance(record, LineIssue):
        return None, [record]
    if not isinstance(record, dict):
        return None, [LineIssue(number, "a line must be a JSON object")]
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return None, [LineIssue(number, "'prompt' must be a non-empty string")]
    if len(prompt) > max_prompt_chars:
        return None, [LineIssue(number, f"prompt is {len(prompt)} characters, over the {max_prompt_chars} limit")]
    labels = _labels_of(record)
    if labels is None:
        return None, [LineIssue(number, "needs 'intents' (a list) or 'completion' (an object or a list)")]
    issues: list[LineIssue] = []
    if unknown := sorted(set(record) - {"prompt", "intents", "completion", "raw", "source", "family"}):
        issues.append(LineIssue(number, f"unknown keys {unknown}", "warning"))
    intents = []
    for index, raw_intent in enumerate(labels, start=1):
        result = canonicalizer.intent(raw_intent, strict=mode == "validate")
        issues += [LineIssue(number, f"intent {index}: {p}", p.severity) for p in result.problems]
        if result.intent is None:
            continue
        if mode == "validate" and isinstance(raw_intent, dict):
            for name, value in result.intent.fields().items():
                if (written := raw_intent.get(name)) != value:
                    message = f"intent {index}: {name} {written!r} is not canonical (expected {value!r})"
                    issues.append(LineIssue(number, message))
        intents.append(result.intent)
    if any(issue.severity == "error" for issue in issues):
        return None, issues
    example = Example(
        prompt=prompt,
        intents=intents,
        source=record.get("source") if isinstance(record.get("source"), str) else None,
        family=record.get("family") if isinstance(record.get("family"), str) else None,
    )
    raw = record.get("raw")
    if raw is not None:
        raw_issues = _check_raw(number, raw, example, canonicalizer)
        issues += raw_issues
        if raw_issues:
            return None, issues
        example = example.model_copy(update={"raw": raw})
    return example, issues


def _labels_of(record: dict) -> list | None:
    if "intents" in record:
        return record["intents"] if isinstance(record["intents"], list) else None
    completion = record.get("completion")
    if isinstance(completion, dict):
        return [completion]
    return completion if isinstance(completion, list) else None


def _check_raw(number: int, raw: Any, example: Example, canonicalizer: Canonicalizer) -> list[LineIssue]:
    if not isinstance(raw, list) or len(raw) != len(example.intents) or not all(isinstance(r, dict) for r in raw):
        return [LineIssue(number, "'raw' must be a list with one object per intent")]
    issues = []
    for index, (spans, intent) in enumerate(zip(raw, example.intents, strict=True), start=1):
        labels = intent.fields()
        for name, span in spans.items():
            if not isinstance(span, str) or span not in example.prompt:
                issues.append(LineIssue(number, f"intent {index}: raw {name} {span!r} does not occur in the prompt"))
            elif name not in labels or canonicalizer.value(name, span) != labels[name]:
                issues.append(LineIssue(number, f"intent {index}: raw {name} {span!r} does not match the label"))
    return issues


def check_records(
    records: Iterable[tuple[int, Any]],
    canonicalizer: Canonicalizer,
    *,
    mode: Mode,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
) -> tuple[list[Example], list[LineIssue]]:
    """Examples from every good record, and the issues of every bad one (duplicates included)."""
    examples: list[Example] = []
    issues: list[LineIssue] = []
    first_line: dict[str, int] = {}
    for number, record in records:
        example, found = check_record(number, record, canonicalizer, mode=mode, max_prompt_chars=max_prompt_chars)
        issues += found
        if example is None:
            continue
        key = normalized_prompt(example.prompt)
        if key in first_line:
            issues.append(LineIssue(number, f"duplicate prompt (first on line {first_line[key]})"))
            continue
        first_line[key] = number
        examples.append(example)
    return examples, issues


def read_examples(
    path: Path,
    canonicalizer: Canonicalizer,
    *,
    mode: Mode = "validate",
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
) -> list[Example]:
    """Every example of a data file; raises DataFileError listing all bad lines if any."""
    examples, issues = check_records(iter_records(path), canonicalizer, mode=mode, max_prompt_chars=max_prompt_chars)
    if errors := [issue for issue in issues if issue.severity == "error"]:
        raise DataFileError(Path(path), errors)
    return examples


def write_examples(path: Path, examples: Iterable[Example], *, overwrite: bool = False) -> int:
    """Write examples as JSONL; refuses to replace an existing file unless told to."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def validate_file(
    path: Path, canonicalizer: Canonicalizer, *, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
) -> tuple[int, list[LineIssue]]:
    """(number of good examples, every issue) of a data file that should already be canonical."""
    examples, issues = check_records(
        iter_records(path), canonicalizer, mode="validate", max_prompt_chars=max_prompt_chars
    )
    return len(examples), issues


def canonicalize_file(
    source: Path,
    destination: Path,
    canonicalizer: Canonicalizer,
    *,
    overwrite: bool = False,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
) -> tuple[int, list[LineIssue]]:
    """Write the canonical form of every good line of `source`; bad lines are reported, not written."""
    if Path(destination).resolve() == Path(source).resolve():
        raise ValueError("refusing to write the output over the input file")
    examples, issues = check_records(
        iter_records(source), canonicalizer, mode="canonicalize", max_prompt_chars=max_prompt_chars
    )
    return write_examples(destination, examples, overwrite=overwrite), issues
