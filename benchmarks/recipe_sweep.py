"""Compare training recipes over several seeds.

On this data the seed alone moves test exact match by about 5 points (docs/BENCHMARKS.md, "Seed
variance"), so one run per recipe compares nothing: this runs every recipe with every seed and
reports each recipe's mean and range.

Each (recipe, seed) is one `brianft train` process: the config, the sweep's `--set` overrides,
the recipe's own overrides and `train.seed`; `--parallel` of them at a time (on one GPU, time one
run alone first: several processes share the device). `--eval FILE` also scores each finished
run on a labelled file with `brianft evaluate` (e.g. benchmarks/data/fresh_requests.jsonl, text
written by someone else). A run directory that already holds metrics.json is not trained again
and an unfinished one is resumed, so a stopped sweep goes on where it stopped; nothing is ever
overwritten.

Written to OUT: results.tsv (a line per run, as runs finish), summary.md (per recipe: runs, mean
and range), logs/RECIPE-sSEED.log, runs/RECIPE-sSEED/.

    python benchmarks/recipe_sweep.py --out sweeps/lr --seeds 0,1,2 \\
        --recipe default= --recipe lr1e-3="train.lr=1e-3" \\
        --recipe r32="model.lora.r=32 model.lora.alpha=64" \\
        [--config configs/default.yaml] [--set train.device=cuda ...] [--parallel 1] \\
        [--eval benchmarks/data/fresh_requests.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

COLUMNS = ("recipe", "seed", "status", "test_em", "test_action", "curated_em", "held_out_em", "val_em", "train_s")


@dataclass(frozen=True)
class Job:
    recipe: str
    overrides: tuple[str, ...]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.recipe}-s{self.seed}"


def parse_recipe(text: str) -> tuple[str, tuple[str, ...]]:
    """'name=key=value key=value' -> (name, overrides); 'name=' is the config unchanged."""
    name, sep, overrides = text.partition("=")
    if not sep or not name or any(c in name for c in "/ \t"):
        raise argparse.ArgumentTypeError(f"--recipe NAME=OVERRIDES (e.g. lr1e-3='train.lr=1e-3'), got {text!r}")
    pairs = tuple(overrides.split())
    if bad := [p for p in pairs if "=" not in p]:
        raise argparse.ArgumentTypeError(f"recipe {name!r}: {bad[0]!r} is not key=value")
    return name, pairs


def run_job(job: Job, args) -> dict:
    """Train (or resume, or reuse) one run, score it on the --eval files; its results row."""
    run_dir, log = args.out / "runs" / job.name, args.out / "logs" / f"{job.name}.log"
    row: dict = {"recipe": job.recipe, "seed": job.seed, "status": "ok"}
    with log.open("a", encoding="utf-8") as out:
        if not (run_dir / "metrics.json").is_file():
            command = [sys.executable, "-m", "brianft", "train", "--output-dir", str(run_dir)]
            command += ["--config", str(args.config)] if args.config else []
            for override in (*args.set, *job.overrides, f"train.seed={job.seed}"):
                command += ["--set", override]
            command += ["--resume"] if run_dir.exists() else []
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                return {**row, "status": f"training failed, see {log}"}
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for path in args.eval:
            report = run_dir / f"eval-{path.stem}"
            if not (report / "metrics.json").is_file():
                command = [sys.executable, "-m", "brianft", "evaluate", "--model", str(run_dir), "--data", str(path)]
                if subprocess.run([*command, "--out", str(report)], stdout=out, stderr=subprocess.STDOUT).returncode:
                    return {**row, "status": f"evaluation on {path.name} failed, see {log}"}
            row[f"{path.stem}_em"] = json.loads((report / "metrics.json").read_text())["exact_match"]
    by_source = metrics.get("test_by_source", {})
    return {
        **row,
        "test_em": metrics.get("test", {}).get("exact_match"),
        "test_action": metrics.get("test", {}).get("action_accuracy"),
        "curated_em": by_source.get("curated", {}).get("exact_match"),
        "held_out_em": by_source.get("synthetic", {}).get("exact_match"),
        "val_em": metrics.get("validation", {}).get("exact_match"),
        "train_s": metrics.get("train_seconds"),
    }


def cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary(rows: list[dict], columns: list[str], recipes: list[str]) -> str:
    """Markdown: per recipe, the finished runs and each score's mean (min-max)."""
    scores = [c for c in columns if c not in ("recipe", "seed", "status", "train_s")]
    lines = ["| recipe | runs | " + " | ".join(scores) + " |", "|---|---|" + "---|" * len(scores)]
    for recipe in recipes:
        done = [r for r in rows if r["recipe"] == recipe and r["status"] == "ok"]
        cells = []
        for score in scores:
            values = [r[score] for r in done if r.get(score) is not None]
            cells.append(f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if values else "-")
        failed = sum(r["recipe"] == recipe and r["status"] != "ok" for r in rows)
        runs = f"{len(done)}" + (f" (+{failed} failed)" if failed else "")
        lines.append(f"| {recipe} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="sweep directory (results, logs, runs)")
    parser.add_argument("--recipe", type=parse_recipe, action="append", required=True, help="NAME=OVERRIDES")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values")
    parser.add_argument("--config", type=Path, help="YAML config (default: brianft's defaults)")
    parser.add_argument("--set", action="append", default=[], help="override for every run: key=value")
    parser.add_argument("--parallel", type=int, default=1, help="training processes at a time")
    parser.add_argument("--eval", type=Path, action="append", default=[], help="also score each run on this file")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes integers separated by commas, got {args.seeds!r}")
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    if missing := [p for p in [*args.eval, *([args.config] if args.config else [])] if not p.is_file()]:
        parser.error(f"file not found: {missing[0]}")
    names = [name for name, _ in args.recipe]
    if len(set(names)) != len(names):
        parser.error("recipe names must differ")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    # seed-major, so that a sweep stopped early leaves every recipe with the same seeds
    jobs = [Job(name, overrides, seed) for seed in seeds for name, overrides in args.recipe]
    columns = [*COLUMNS, *(f"{p.stem}_em" for p in args.eval)]
    results = args.out / "results.tsv"
    results.write_text("\t".join(columns) + "\n")
    rows = []
    with ThreadPoolExecutor(args.parallel) as pool, tqdm(total=len(jobs), desc="runs", unit="run") as bar:
        futures = [pool.submit(run_job, job, args) for job in jobs]
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            with results.open("a") as out:
                out.write("\t".join(cell(row.get(c)) for c in columns) + "\n")
            bar.update(1)
            bar.set_postfix_str(f"{row['recipe']}-s{row['seed']}: {cell(row.get('test_em'))}")
    table = summary(rows, columns, names)
    (args.out / "summary.md").write_text(table)
    print(table)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
