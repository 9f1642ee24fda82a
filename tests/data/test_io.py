import json
from pathlib import Path

import pytest

from brianft.data.io import (
    DataFileError,
    canonicalize_file,
    read_examples,
    validate_file,
    write_examples,
)
from brianft.normalize import Canonicalizer


@pytest.fixture(scope="module")
def canonicalizer() -> Canonicalizer:
    return Canonicalizer.default()


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_validate_reports_every_bad_line_with_its_number(tmp_path, canonicalizer):
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            {
                "prompt": "swap 1 eth for usdc",
                "intents": [{"action": "swap", "token1": "ETH", "token2": "USDC", "amount": "1"}],
            },
            "{not json",
            {"prompt": "", "intents": []},
            {"prompt": "send 1 eth", "intents": [{"action": "transfer", "token1": "eth", "amount": "1"}]},
            {"prompt": "x", "intents": [{"action": "teleport"}]},
            {"prompt": "swap 1 eth for usdc", "intents": []},
            {"prompt": "bridge 5 dai", "intents": [{"action": "bridge", "token1": "DAI", "amount": 5}]},
            {"prompt": "hi"},
        ],
    )
    count, issues = validate_file(path, canonicalizer)
    errors = {issue.line: issue.message for issue in issues if issue.severity == "error"}
    assert count == 1
    assert set(errors) == {2, 3, 4, 5, 6, 7, 8}
    assert "not valid JSON" in errors[2]
    assert "non-empty string" in errors[3]
    assert "not canonical" in errors[4] and "'ETH'" in errors[4]
    assert "unknown action" in errors[5]
    assert "duplicate prompt (first on line 1)" in errors[6]
    assert "must be a string" in errors[7]
    assert "needs 'intents'" in errors[8]


def test_read_examples_raises_with_all_issues(tmp_path, canonicalizer):
    path = write_lines(tmp_path / "d.jsonl", ["{", "[1]"])
    with pytest.raises(DataFileError) as info:
        read_examples(path, canonicalizer)
    assert [i.line for i in info.value.issues] == [1, 2]
    assert "2 problem(s)" in str(info.value)


def test_oversized_prompt_is_rejected(tmp_path, canonicalizer):
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "a" * 50, "intents": []}])
    _, issues = validate_file(path, canonicalizer, max_prompt_chars=20)
    assert "over the 20 limit" in issues[0].message


def test_canonicalize_rewrites_raw_values(tmp_path, canonicalizer):
    source = write_lines(
        tmp_path / "raw.jsonl",
        [
            {
                "prompt": "bridge 2.5k $pepe from Arbitrum One to base",
                "intents": [
                    {
                        "action": "Bridge",
                        "token1": "$pepe",
                        "amount": "2.5k",
                        "chain": "Arbitrum One",
                        "dest_chain": "base",
                    }
                ],
            },
            {
                "prompt": "send half my eth to Bob.eth",
                "completion": {
                    "action": "transfer",
                    "token1": "eth",
                    "amount": "half",
                    "address": "Bob.eth",
                    "chain": None,
                },
            },
            {"prompt": "bad", "intents": [{"action": "swap", "amount": "lots"}]},
        ],
    )
    out = tmp_path / "out.jsonl"
    count, issues = canonicalize_file(source, out, canonicalizer)
    assert count == 2
    assert [i.line for i in issues if i.severity == "error"] == [3]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["intents"] == [
        {"action": "bridge", "token1": "PEPE", "amount": "2500", "chain": "arbitrum", "dest_chain": "base"}
    ]
    assert lines[1]["intents"] == [{"action": "transfer", "token1": "ETH", "amount": "50%", "address": "bob.eth"}]
    # the output is canonical, so it validates
    assert validate_file(out, canonicalizer) == (2, [])


def test_canonicalize_refuses_to_overwrite(tmp_path, canonicalizer):
    source = write_lines(tmp_path / "raw.jsonl", [{"prompt": "hi", "intents": []}])
    out = write_lines(tmp_path / "out.jsonl", ["precious"])
    with pytest.raises(FileExistsError):
        canonicalize_file(source, out, canonicalizer)
    assert out.read_text() == '"precious"\n' or out.read_text() == "precious\n"
    with pytest.raises(ValueError, match="over the input"):
        canonicalize_file(source, source, canonicalizer, overwrite=True)


def test_csv_and_brian_formats(tmp_path, canonicalizer):
    import csv

    csv_path = tmp_path / "d.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion"])
        label = {"action": "swap", "token1": "eth", "token2": "usdc", "amount": "1"}
        writer.writerow(["swap 1 eth to usdc", json.dumps(label)])
        writer.writerow(["oops", "{not json"])
    count, issues = canonicalize_file(csv_path, tmp_path / "o.jsonl", canonicalizer)
    assert count == 1
    assert issues[0].line == 3 and "not valid JSON" in issues[0].message
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("text,label\na,b\n", encoding="utf-8")
    assert "needs a 'prompt' column" in validate_file(bad_csv, canonicalizer)[1][0].message


def test_raw_spans_are_checked(tmp_path, canonicalizer):
    good = {
        "prompt": "wrap ten eth",
        "intents": [{"action": "wrap", "token1": "ETH", "amount": "10"}],
        "raw": [{"token1": "eth", "amount": "ten"}],
    }
    bad = {
        "prompt": "wrap 10 eth",
        "intents": [{"action": "wrap", "token1": "ETH", "amount": "10"}],
        "raw": [{"amount": "ten"}],
    }
    path = write_lines(tmp_path / "d.jsonl", [good, bad])
    count, issues = validate_file(path, canonicalizer)
    assert count == 1
    assert issues[0].line == 2 and "does not occur" in issues[0].message


def test_non_utf8_file_is_a_clear_error(tmp_path, canonicalizer):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "\xff\xfe", "intents": []}\n')
    with pytest.raises(DataFileError, match="not UTF-8"):
        validate_file(path, canonicalizer)


def test_write_examples_round_trip(tmp_path, canonicalizer):
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            {
                "prompt": "stake 1 eth on lido",
                "intents": [{"action": "stake", "token1": "ETH", "amount": "1", "protocol": "lido"}],
            }
        ],
    )
    examples = read_examples(source, canonicalizer)
    out = tmp_path / "out.jsonl"
    assert write_examples(out, examples) == 1
    assert read_examples(out, canonicalizer) == examples
    with pytest.raises(FileExistsError):
        write_examples(out, examples)
