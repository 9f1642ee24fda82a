"""benchmarks/recipe_sweep.py: every recipe with every seed, results as runs finish, a summary
per recipe, and a second sweep that reuses finished runs instead of training them again."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "recipe_sweep.py"
FRESH = Path(__file__).parent.parent / "benchmarks" / "data" / "fresh_requests.jsonl"


def load_sweep():
    spec = importlib.util.spec_from_file_location("recipe_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


TINY = [
    "data.curated=false",
    "data.written=false",
    "data.synthetic_train=32",
    "data.synthetic_test=6",
    "train.batch_size=8",
    "train.max_steps=6",
    "train.lr=3e-2",
    "train.warmup_ratio=0",
    "train.eval_examples=4",
    "train.eval_batch_size=4",
    "train.max_new_tokens=12",
    "train.threads=1",
    "model.lora.r=4",
]


def test_sweep_trains_every_recipe_and_seed_and_reuses_finished_runs(tiny_llama_dir, tmp_path):
    sweep = load_sweep()
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(FRESH.read_text().splitlines(keepends=True)[:3]))
    out = tmp_path / "sweep"
    argv = ["--out", str(out), "--seeds", "0", "--recipe", "base=", "--recipe", "r8=model.lora.r=8"]
    argv += ["--parallel", "2", "--eval", str(extra)]
    for override in (f"model.base={tiny_llama_dir}", *TINY):
        argv += ["--set", override]
    assert sweep.main(argv) == 0

    header, *lines = (out / "results.tsv").read_text().splitlines()
    assert header.split("\t")[-1] == "extra_em"
    rows = [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]
    assert sorted((r["recipe"], r["seed"], r["status"]) for r in rows) == [("base", "0", "ok"), ("r8", "0", "ok")]
    for row in rows:
        assert 0 <= float(row["test_em"]) <= 1 and 0 <= float(row["extra_em"]) <= 1
    assert "r: 8" in (out / "runs" / "r8-s0" / "config.yaml").read_text()  # the recipe's override
    assert "r: 4" in (out / "runs" / "base-s0" / "config.yaml").read_text()  # the sweep's own
    summary = (out / "summary.md").read_text()
    assert "| base | 1 |" in summary and "| r8 | 1 |" in summary

    logs = {path: path.stat().st_size for path in (out / "logs").iterdir()}
    shutil.rmtree(out / "runs" / "r8-s0" / "eval-extra")  # only this is redone
    assert sweep.main(argv) == 0
    assert (out / "logs" / "base-s0.log").stat().st_size == logs[out / "logs" / "base-s0.log"]
    assert (out / "runs" / "r8-s0" / "eval-extra" / "metrics.json").is_file()
    assert len((out / "results.tsv").read_text().splitlines()) == 3


def test_sweep_reports_a_failed_run_and_goes_on(tiny_llama_dir, tmp_path):
    sweep = load_sweep()
    out = tmp_path / "sweep"
    argv = ["--out", str(out), "--seeds", "0", "--recipe", "bad=train.lr=-1", "--recipe", "good="]
    for override in (f"model.base={tiny_llama_dir}", *TINY):
        argv += ["--set", override]
    assert sweep.main(argv) == 1
    statuses = {line.split("\t")[0]: line.split("\t")[2] for line in (out / "results.tsv").read_text().splitlines()[1:]}
    assert statuses["good"] == "ok" and statuses["bad"].startswith("training failed")
    assert "| bad | 0 (+1 failed) |" in (out / "summary.md").read_text()


@pytest.mark.parametrize("text", ["noequals", "=train.lr=1", "a b=train.lr=1", "x=train.lr"])
def test_bad_recipes_are_refused(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        load_sweep().parse_recipe(text)
