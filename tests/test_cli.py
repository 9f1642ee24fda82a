"""The `brianft` command as a user runs it: exit codes, messages, files written."""

import json

from typer.testing import CliRunner

from brianft.cli import app

runner = CliRunner()

GOOD = {
    "prompt": "stake 1 eth with lido",
    "intents": [{"action": "stake", "token1": "ETH", "amount": "1", "protocol": "lido"}],
}
RAW = {
    "prompt": "swap 1,500 usdc to eth on mainnet",
    "intents": [{"action": "swap", "token1": "usdc", "token2": "eth", "amount": "1,500", "chain": "mainnet"}],
}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_validate_ok_and_bad(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    result = runner.invoke(app, ["data", "validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "1 examples, all canonical" in result.output

    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, RAW, "{oops"])
    result = runner.invoke(app, ["data", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:2:" in result.output and "not canonical" in result.output
    assert f"{bad}:3:" in result.output and "not valid JSON" in result.output


def test_validate_missing_file_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "data file not found" in result.output
    assert "Traceback" not in result.output


def test_canonicalize_then_validate(tmp_path):
    source = write_jsonl(tmp_path / "raw.jsonl", [RAW])
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["data", "canonicalize", str(source), str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    assert row["intents"] == [
        {"action": "swap", "token1": "USDC", "token2": "ETH", "amount": "1500", "chain": "ethereum"}
    ]
    assert runner.invoke(app, ["data", "validate", str(out)]).exit_code == 0
    again = runner.invoke(app, ["data", "canonicalize", str(source), str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["data", "canonicalize", str(source), str(out), "--overwrite"]).exit_code == 0


def test_canonicalize_reports_bad_lines_and_fails(tmp_path):
    source = write_jsonl(
        tmp_path / "raw.jsonl", [RAW, {"prompt": "x", "intents": [{"action": "swap", "amount": "lots"}]}]
    )
    result = runner.invoke(app, ["data", "canonicalize", str(source), str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1
    assert ":2:" in result.output and "not a plain number" in result.output
    assert "1 bad line(s) left out" in result.output


def test_stats_of_a_file_as_json(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"prompt": "what is a rollup?", "intents": []}])
    result = runner.invoke(app, ["data", "stats", str(path), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)[str(path)]
    assert stats["examples"] == 2
    assert stats["out_of_scope"] == 1
    assert stats["actions"]["stake"] == 1
    assert stats["fields"]["protocol"] == 1


def test_bad_config_override_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    result = runner.invoke(app, ["data", "validate", str(path), "--set", "data.max_prompt_chars=-3"])
    assert result.exit_code == 2
    assert "data.max_prompt_chars" in result.output


def test_data_stats_of_the_configured_splits():
    result = runner.invoke(
        app, ["data", "stats", "--set", "data.synthetic_train=200", "--set", "data.synthetic_test=50"]
    )
    assert result.exit_code == 0, result.output
    assert "Dataset" in result.output and "total_supply" in result.output


def test_run_trains_evaluates_and_summarises(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", "--set", f"model.base={tiny_llama_dir}", "--set", f"train.output_dir={run_dir}"]
    for override in (
        "data.curated=false",
        "data.written=false",
        "data.synthetic_train=40",
        "data.synthetic_test=8",
        "train.max_steps=3",
        "train.batch_size=8",
        "train.eval_examples=2",
        "train.max_new_tokens=8",
        "train.threads=1",
    ):
        args += ["--set", override]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test" in result.output and "exact match" in result.output
    assert "3 steps" in result.output and (run_dir / "metrics.json").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_train_refuses_a_missing_base_model(tmp_path):
    result = runner.invoke(
        app, ["train", "--set", f"model.base={tmp_path / 'nope'}", "--output-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


def test_generate_is_deterministic_and_protects_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert runner.invoke(app, ["data", "generate", "--n", "50", "--seed", "3", "--out", str(a)]).exit_code == 0
    assert runner.invoke(app, ["data", "generate", "--n", "50", "--seed", "3", "--out", str(b)]).exit_code == 0
    assert a.read_text() == b.read_text()
    assert len(a.read_text().splitlines()) == 50
    assert runner.invoke(app, ["data", "validate", str(a)]).exit_code == 0
    again = runner.invoke(app, ["data", "generate", "--n", "5", "--out", str(a)])
    assert again.exit_code == 2 and a.read_text() == b.read_text()


def test_split_writes_three_valid_files(tmp_path):
    out = tmp_path / "splits"
    result = runner.invoke(
        app,
        [
            "data",
            "split",
            "--out",
            str(out),
            "--set",
            "data.synthetic_train=100",
            "--set",
            "data.synthetic_test=20",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("train", "validation", "test"):
        assert runner.invoke(app, ["data", "validate", str(out / f"{name}.jsonl")]).exit_code == 0
