"""`brianft predict` and `brianft evaluate` as a user runs them (rules backend: no model)."""

import json

from typer.testing import CliRunner

from brianft.cli import app

runner = CliRunner()

EXAMPLES = [
    {
        "prompt": "stake 1 eth with lido",
        "intents": [{"action": "stake", "token1": "ETH", "amount": "1", "protocol": "lido"}],
    },
    {
        "prompt": "swap 100 dai for usdc on base",
        "intents": [{"action": "swap", "token1": "DAI", "token2": "USDC", "amount": "100", "chain": "base"}],
    },
    {"prompt": "how do I make an omelette?", "intents": []},
    {
        "prompt": "send 5 dai to bob.eth",
        "intents": [{"action": "transfer", "token1": "DAI", "amount": "5", "address": "bob.eth"}],
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_predict_single_with_rules():
    result = runner.invoke(app, ["predict", "--model", "rules", "send 5 dai to Bob.eth"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["intents"] == [{"action": "transfer", "token1": "DAI", "amount": "5", "address": "bob.eth"}]
    assert out["missing"] == [[]] and out["warnings"] == [] and "error" not in out


def test_predict_refused_request_exits_1_with_json():
    result = runner.invoke(app, ["predict", "--model", "rules", "   "])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == "the request is empty"


def test_predict_needs_request_or_input():
    assert runner.invoke(app, ["predict", "--model", "rules"]).exit_code == 2
    assert runner.invoke(app, ["predict", "--model", "rules", "--output", "x.jsonl", "hi"]).exit_code == 2


def test_predict_default_model_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["predict", "swap 1 eth for usdc"])
    assert result.exit_code == 2
    assert "not a finished brianft run" in result.output and "Traceback" not in result.output


def test_predict_text_file_in_order_and_overwrite(tmp_path):
    source = tmp_path / "requests.txt"
    source.write_text("send 5 dai to bob.eth\n\nwrap 2 eth\nhello there\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", "--model", "rules", "--input", str(source), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = lines(out)
    assert [r["prompt"] for r in rows] == ["send 5 dai to bob.eth", "wrap 2 eth", "hello there"]
    assert [[i["action"] for i in r["intents"]] for r in rows] == [["transfer"], ["wrap"], []]

    before = out.read_text()
    again = runner.invoke(app, ["predict", "--model", "rules", "--input", str(source), "--output", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert out.read_text() == before
    forced = runner.invoke(
        app, ["predict", "--model", "rules", "--input", str(source), "--output", str(out), "--overwrite"]
    )
    assert forced.exit_code == 0 and lines(out) == rows


def test_predict_jsonl_file(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": e["prompt"]} for e in EXAMPLES])
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", "-m", "rules", "-i", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["prompt"] for r in lines(out)] == [e["prompt"] for e in EXAMPLES]


def test_predict_bad_jsonl_is_a_clear_error(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "wrap 1 eth"}\n{"text": "no prompt"}\n', encoding="utf-8")
    result = runner.invoke(app, ["predict", "-m", "rules", "-i", str(source), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and ":2:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_evaluate_rules_baseline_writes_report(tmp_path):
    data = write_jsonl(tmp_path / "test.jsonl", EXAMPLES)
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--baseline", "rules", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("metrics.json", "report.md", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 4 and metrics["exact_match"] == 1.0
    assert metrics["latency"]["p50_s"] >= 0
    assert "exact match" in result.output


def test_evaluate_needs_a_model_or_baseline(tmp_path):
    data = write_jsonl(tmp_path / "test.jsonl", EXAMPLES)
    assert runner.invoke(app, ["evaluate", "--data", str(data)]).exit_code == 2
    assert runner.invoke(app, ["evaluate", "--data", str(data), "--baseline", "gpt"]).exit_code == 2


def test_evaluate_run_against_both_baselines(tiny_run_dir, tmp_path):
    """The zero-shot baseline is the run's own base model, prompted with worked examples."""
    data = write_jsonl(tmp_path / "test.jsonl", EXAMPLES)
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(tiny_run_dir), "--data", str(data), "--out", str(out)]
    result = runner.invoke(app, [*args, "--baseline", "rules", "--baseline", "zero-shot", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    zero_shot = json.loads((out / "baseline-zero-shot" / "metrics.json").read_text())
    assert zero_shot["examples"] == 4 and "few-shot prompt, no adapter" in zero_shot["model"]
    assert (out / "baseline-rules" / "metrics.json").is_file()
    assert "baseline: zero-shot" in result.output and "baseline: rules" in result.output
    assert runner.invoke(app, [*args, "--dtype", "float16"]).exit_code == 2


def test_predict_and_evaluate_with_a_tiny_run(tiny_llama_dir, tiny_run_dir, tmp_path):
    run_dir = tiny_run_dir
    result = runner.invoke(app, ["predict", "--model", str(run_dir), "swap 1 eth for usdc"])
    assert result.exit_code in (0, 1), result.output  # a 2-step model may well emit nonsense
    assert json.loads(result.stdout)["prompt"] == "swap 1 eth for usdc"

    # a model directory without an adapter (here: the base alone) works too
    result = runner.invoke(app, ["predict", "--model", str(tiny_llama_dir), "wrap 1 eth"])
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["prompt"] == "wrap 1 eth"

    data = write_jsonl(tmp_path / "test.jsonl", EXAMPLES)
    result = runner.invoke(app, ["evaluate", "--model", str(run_dir), "--data", str(data), "--baseline", "rules"])
    assert result.exit_code == 0, result.output
    for directory in (run_dir / "evaluation", run_dir / "evaluation" / "baseline-rules"):
        for name in ("metrics.json", "report.md", "confusion_matrix.png"):
            assert (directory / name).is_file(), directory / name
    assert json.loads((run_dir / "evaluation" / "metrics.json").read_text())["examples"] == 4
