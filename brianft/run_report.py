"""What a finished training run leaves behind: adapter, metrics, curves, report, model card."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from brianft import __version__
from brianft.evaluate import failure_record, failures_table, is_exact, score_predictions
from brianft.schema import SCHEMA_VERSION, Example

# Requests shown live at the end of a run (not part of any split's metrics).
DEMO_REQUESTS = (
    "swap 100 USDC for ETH on base",
    "send 0.1 eth to vitalik.eth",
    "supply 2 eth on aave and borrow 1,500 gho",
    "what is a rollup?",
)


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(8, 4.5))
    steps = [h["step"] for h in history if "loss" in h]
    loss_axis.plot(steps, [h["loss"] for h in history if "loss" in h], color="tab:blue", label="training loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("loss per supervised token", color="tab:blue")
    loss_axis.set_yscale("log")
    evals = [h for h in history if "val_exact_match" in h]
    if evals:
        score_axis = loss_axis.twinx()
        score_axis.plot(
            [h["step"] for h in evals],
            [h["val_exact_match"] for h in evals],
            "o-",
            color="tab:green",
            label="validation exact match",
        )
        score_axis.plot(
            [h["step"] for h in evals],
            [h["val_action_accuracy"] for h in evals],
            "s--",
            color="tab:orange",
            label="validation action accuracy",
        )
        score_axis.set_ylim(0, 1.02)
        score_axis.set_ylabel("score")
        score_axis.legend(loc="center right")
    loss_axis.set_title("brianft fine-tuning")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scores_table(rows: list[tuple[str, dict]]) -> str:
    lines = [
        "## Test split\n",
        "| part | examples | exact match | action accuracy | format validity |",
        "|---|---|---|---|---|",
    ]
    for name, s in rows:
        scores = " | ".join(f"{s[k]:.3f}" for k in ("exact_match", "action_accuracy", "format_validity"))
        lines.append(f"| {name} | {s['examples']} | {scores} |")
    return "\n".join(lines)


def _cells(scores: dict) -> str:
    keys = ("exact_match", "action_accuracy", "format_validity")
    return " | ".join(f"{scores[k]:.3f}" if k in scores else "n/a" for k in keys)


def model_card(config, metrics: dict) -> str:
    return f"""# brianft LoRA adapter

Extracts wallet intents (schema {SCHEMA_VERSION}) from natural-language requests.

- base model: `{metrics["base_model"]}`
- LoRA: r={config.model.lora.r}, alpha={config.model.lora.alpha}, targets={metrics["lora_targets"]}
- trained: {metrics["steps"]} steps in {metrics["train_seconds"]:.0f} s ({metrics["precision"]}), \
{metrics["train_examples"]} rows
- brianft {__version__}

| split | exact match | action accuracy | format validity |
|---|---|---|---|
| validation, model alone (best step {metrics["best_step"]}) | {_cells(metrics["validation"])} |
| test | {_cells(metrics.get("test", {}))} |

Load it with plain peft:

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "adapter")
```

or with brianft: `brianft predict --model <this run> "swap 1 eth for usdc on base"`.
The model emits one line per intent with values as written in the request; brianft's
parser and canonicaliser turn that into validated intents.
"""


def finish_run(
    *,
    output_dir: Path,
    config,
    model,
    tokenizer,
    loaded,
    splits,
    canonicalizer,
    state,
    train_seconds: float,
    supervised_tokens: int,
    precision: str,
    evaluate: Callable,
) -> dict:
    """Load the best adapter, evaluate on test, and write every artefact of the run."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    best = output_dir / "best_adapter"
    if (best / "adapter_model.safetensors").exists():
        set_peft_model_state_dict(model, load_file(str(best / "adapter_model.safetensors"), device=str(model.device)))
    model.save_pretrained(output_dir / "adapter")
    tokenizer.save_pretrained(output_dir / "adapter")
    validation_record = next(
        (h for h in reversed(state.history) if h.get("step") == state.best_step and "val_exact_match" in h),
        {},
    )
    metrics = {
        "base_model": loaded.source,
        "base": config.model.base,
        "is_seq2seq": loaded.is_seq2seq,
        "lora_targets": str(config.model.lora.target_modules or "all-linear"),
        "steps": state.step,
        "best_step": state.best_step,
        "train_examples": len(splits.train),
        "train_seconds": round(train_seconds, 2),
        "precision": precision,  # train.bf16 as resolved on this hardware
        "supervised_tokens": supervised_tokens,
        "supervised_tokens_per_second": round(supervised_tokens / max(train_seconds, 1e-9), 2),
        "final_loss": state.history[-1]["loss"] if state.history and "loss" in state.history[-1] else None,
        "validation": {k.removeprefix("val_"): v for k, v in validation_record.items() if k.startswith("val_")},
    }
    report = [f"# Evaluation report\n\nBase model: `{loaded.source}`; {state.step} steps.\n"]
    if config.train.test_eval and splits.test:
        scores, predictions = evaluate(splits.test)
        metrics["test"] = scores
        by_source: dict[str, dict] = {}
        for source in sorted({e.source or "unknown" for e in splits.test}):
            pairs = [(e, p) for e, p in zip(splits.test, predictions, strict=True) if (e.source or "unknown") == source]
            by_source[source] = score_predictions([e for e, _ in pairs], [p for _, p in pairs])
        metrics["test_by_source"] = by_source
        report.append(_scores_table([("all", scores), *by_source.items()]))
        failures = [failure_record(e, p) for e, p in zip(splits.test, predictions, strict=True) if not is_exact(e, p)]
        report.append("\n## Failures (first 50)\n\n" + failures_table(failures[:50]))
        (output_dir / "test_predictions.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "prompt": e.prompt,
                        "expected": [i.to_dict() for i in e.intents],
                        "output": p.text,
                        "intents": [i.to_dict() for i in p.intents],
                        "error": p.error,
                    },
                    ensure_ascii=False,
                )
                + "\n"
                for e, p in zip(splits.test, predictions, strict=True)
            )
        )
    _, demo_predictions = evaluate([Example(prompt=p, intents=[]) for p in DEMO_REQUESTS])
    metrics["demo"] = [
        {"prompt": p, "intents": [i.to_dict() for i in d.intents], "error": d.error}
        for p, d in zip(DEMO_REQUESTS, demo_predictions, strict=True)
    ]
    (output_dir / "eval_report.md").write_text("\n".join(report) + "\n")
    (output_dir / "history.json").write_text(json.dumps(state.history, indent=1))
    plot_curves(state.history, output_dir / "curves.png")
    (output_dir / "README.md").write_text(model_card(config, metrics))
    # Written last: its presence marks the run as finished (and protects it from overwrites).
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def render_summary(metrics: dict, run_dir: Path, console, *, wall_seconds: float) -> None:
    """The main job's closing table: scores per split and part, time, and live predictions."""
    from rich.table import Table

    table = Table(title=f"brianft run: {run_dir}")
    table.add_column("split / part")
    for column in ("examples", "exact match", "action accuracy", "format validity"):
        table.add_column(column, justify="right")
    rows = [("validation, model alone (best)", metrics.get("validation", {})), ("test", metrics.get("test", {}))]
    rows += [(f"test: {name}", scores) for name, scores in metrics.get("test_by_source", {}).items()]
    for name, scores in rows:
        if scores:
            cells = [f"{scores.get(k, 0):.3f}" for k in ("exact_match", "action_accuracy", "format_validity")]
            table.add_row(name, str(scores.get("examples", "")), *cells)
    console.print(table)
    console.print(
        f"{metrics['steps']} steps on {metrics['train_examples']} examples in {metrics['train_seconds']:.0f} s"
        f" ({metrics['precision']}, {metrics['supervised_tokens_per_second']:.0f} supervised tokens/s);"
        f" whole job {wall_seconds:.0f} s"
    )
    for demo in metrics.get("demo", []):
        console.print(f"[bold]{demo['prompt']}[/bold]")
        console.print(f"  → {demo['intents'] if demo['error'] is None else 'error: ' + demo['error']}", highlight=False)
    console.print(f"run directory: {run_dir} (adapter/, metrics.json, eval_report.md, curves.png)")
