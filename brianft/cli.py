"""The `brianft` command: parses arguments and calls the stage modules, nothing more."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from brianft.config import Config, ConfigError, load_config

app = typer.Typer(help="Fine-tune language models with LoRA to extract wallet intents.", no_args_is_help=True)
data_app = typer.Typer(help="Build, check and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
error_console = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: key=value.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures (bad files, bad config) into a clear message and exit code 2."""
    from brianft.data.io import DataFileError
    from brianft.model import ModelLoadError
    from brianft.normalize import RegistryError
    from brianft.train import RunDirError

    expected = (ConfigError, DataFileError, RegistryError, ModelLoadError, RunDirError)
    try:
        yield
    except (*expected, FileExistsError, FileNotFoundError, ValueError) as exc:
        error_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _config(config: Path | None, overrides: list[str] | None) -> Config:
    with user_errors():
        return load_config(config, overrides)


def _canonicalizer(cfg: Config):
    from brianft.normalize import Canonicalizer, Registry

    with user_errors():
        return Canonicalizer(Registry.load(cfg.data.registry_dirs))


def _print_issues(issues: list, path: Path) -> None:
    for issue in issues:
        colour = "red" if issue.severity == "error" else "yellow"
        line = f"{escape(str(path))}:{issue.line}: [{colour}]{issue.severity}[/{colour}] {escape(issue.message)}"
        error_console.print(line, highlight=False, soft_wrap=True)


def _bad_lines(issues: list) -> int:
    return len({issue.line for issue in issues if issue.severity == "error"})


DEFAULT_CONFIG = Path("configs/default.yaml")
OutputDirOption = Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory (train.output_dir).")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue the unfinished run in the output directory.")]
OverwriteRunOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace a finished run in the output directory.")
]


def _run_config_path(config: Path | None) -> Path | None:
    """The main job's config: the given file, else configs/default.yaml when run from the repository."""
    return config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)


def _train(cfg: Config, resume: bool, overwrite: bool) -> dict:
    from brianft.train import train

    return train(cfg, resume=resume, overwrite=overwrite)


@app.command("train")
def train_command(
    config: ConfigOption = None,
    set_: SetOption = None,
    output_dir: OutputDirOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteRunOption = False,
) -> None:
    """Fine-tune the base model with LoRA (works under torchrun / accelerate launch too)."""
    overrides = [*(set_ or []), *([f"train.output_dir={output_dir}"] if output_dir else [])]
    cfg = _config(config, overrides)
    with user_errors():
        metrics = _train(cfg, resume, overwrite)
    if metrics:
        console.print_json(
            data={k: metrics[k] for k in ("steps", "train_seconds", "validation", "test") if k in metrics}
        )


@app.command()
def run(
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteRunOption = False,
) -> None:
    """The main job: fine-tune the default model on the default data, evaluate on test, summarise."""
    from brianft.run_report import render_summary

    cfg = _config(_run_config_path(config), set_)
    started = time.perf_counter()
    with user_errors():
        metrics = _train(cfg, resume, overwrite)
    render_summary(metrics, Path(cfg.train.output_dir), console, wall_seconds=time.perf_counter() - started)


@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished training run.")],
    merged: Annotated[Path, typer.Option("--merged", help="Directory for merged full weights.")],
    overwrite: OverwriteOption = False,
) -> None:
    """Merge the LoRA adapter into the base weights: a model transformers loads without peft."""
    from brianft.export import export_merged

    with user_errors():
        export_merged(run_dir, merged, overwrite=overwrite)
    console.print(f"merged model written to {merged}")


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL file.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of examples.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same file).")] = 0,
    held_out: Annotated[
        bool, typer.Option("--held-out/--training-families", help="Use only held-out (test) families.")
    ] = False,
    overwrite: OverwriteOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Generate synthetic labelled requests, deduplicated against the curated set."""
    from brianft.data.dataset import load_curated
    from brianft.data.generate import FAMILIES, HELD_OUT_FAMILIES, generate_examples
    from brianft.data.io import write_examples

    cfg = _config(config, set_)
    canonicalizer = _canonicalizer(cfg)
    families = [f for f in FAMILIES if (f in HELD_OUT_FAMILIES) == held_out]
    with user_errors():
        curated = [e.prompt for e in load_curated(canonicalizer)]
        examples = generate_examples(n, seed, exclude_prompts=curated, families=families, canonicalizer=canonicalizer)
        count = write_examples(out, examples, overwrite=overwrite)
    console.print(f"wrote {count} examples from {len(families)} template families to {out}")


@data_app.command("canonicalize")
def data_canonicalize(
    source: Annotated[Path, typer.Argument(help="Input: JSONL, CSV or Brian format, raw values allowed.")],
    destination: Annotated[Path, typer.Argument(help="Output JSONL with canonical values.")],
    overwrite: OverwriteOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Rewrite a data file's labels in canonical form; bad lines are reported with their numbers."""
    from brianft.data.io import canonicalize_file

    cfg = _config(config, set_)
    with user_errors():
        count, issues = canonicalize_file(
            source,
            destination,
            _canonicalizer(cfg),
            overwrite=overwrite,
            max_prompt_chars=cfg.data.max_prompt_chars,
        )
    _print_issues(issues, source)
    errors = _bad_lines(issues)
    console.print(f"wrote {count} canonical examples to {destination}; {errors} bad line(s) left out", soft_wrap=True)
    if errors:
        raise typer.Exit(1)


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="Data file to check (JSONL, CSV or Brian format).")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Check that every line is well-formed and canonical; exit 1 if any line is bad."""
    from brianft.data.io import validate_file

    cfg = _config(config, set_)
    with user_errors():
        count, issues = validate_file(path, _canonicalizer(cfg), max_prompt_chars=cfg.data.max_prompt_chars)
    _print_issues(issues, path)
    errors = _bad_lines(issues)
    if errors:
        error_console.print(f"[red]{errors} bad line(s)[/red]; {count} good example(s)")
        raise typer.Exit(1)
    console.print(f"[green]ok[/green]: {count} examples, all canonical")


@data_app.command("stats")
def data_stats(
    files: Annotated[list[Path] | None, typer.Argument(help="Data files; default: the configured splits.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Counts per action, field and split, and prompt length percentiles."""
    from brianft.data.dataset import build_splits
    from brianft.data.io import read_examples
    from brianft.data.stats import dataset_stats, render_stats

    cfg = _config(config, set_)
    canonicalizer = _canonicalizer(cfg)
    with user_errors():
        if files:
            named = [
                (str(p), read_examples(p, canonicalizer, max_prompt_chars=cfg.data.max_prompt_chars)) for p in files
            ]
        else:
            named = build_splits(cfg.data, canonicalizer).items()
        stats = dataset_stats(named)
    if as_json:
        sys.stdout.write(json.dumps(stats, indent=2) + "\n")
    else:
        render_stats(stats, console)


@data_app.command("split")
def data_split(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for train/validation/test.jsonl.")],
    overwrite: OverwriteOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write the configured splits as JSONL files (with raw spans)."""
    from brianft.data.dataset import build_splits
    from brianft.data.io import write_examples

    cfg = _config(config, set_)
    with user_errors():
        splits = build_splits(cfg.data, _canonicalizer(cfg))
        for name, examples in splits.items():
            count = write_examples(out / f"{name}.jsonl", examples, overwrite=overwrite)
            console.print(f"{name}: {count} examples -> {out / f'{name}.jsonl'}")


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="A training run, a (merged) model directory, 'rules' or 'zero-shot' (base model)."
    ),
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Requests generated together.")]
DtypeOption = Annotated[
    str, typer.Option("--dtype", help="Model weights for inference: auto (bfloat16 where native), float32, bfloat16.")
]
DraftOption = Annotated[
    bool,
    typer.Option("--draft/--no-draft", help="Verify the rules' guess of each output in bulk (same output, faster)."),
]

ConstrainOption = Annotated[
    bool,
    typer.Option(
        "--constrain/--no-constrain",
        help="Let the model write only valid intents whose values occur in the request (default on).",
    ),
]


def _extractor(model: str, batch_size: int, dtype: str = "auto", draft: bool = True, constrain: bool = True):
    from brianft.extract import Extractor

    with user_errors():
        return Extractor.load(model, batch_size=batch_size, dtype=dtype, draft=draft, constrain=constrain)


@app.command()
def predict(
    request: Annotated[str | None, typer.Argument(help="One request; or use --input.")] = None,
    model: ModelOption = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", "-i", help="Requests: text (one a line) or .jsonl with 'prompt'.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="JSONL results, one line a request.")] = None,
    overwrite: OverwriteOption = False,
    batch_size: BatchSizeOption = 16,
    dtype: DtypeOption = "auto",
    draft: DraftOption = True,
    constrain: ConstrainOption = True,
) -> None:
    """Extract the intents of a request (printed as JSON) or of every request in a file."""
    from brianft.extract import DEFAULT_RUN, check_writable, read_requests, write_results

    if (request is None) == (input_file is None):
        error_console.print("[red]error:[/red] give either a request or --input FILE", highlight=False)
        raise typer.Exit(2)
    if output is not None and input_file is None:
        error_console.print("[red]error:[/red] --output needs --input", highlight=False)
        raise typer.Exit(2)
    with user_errors():
        requests = read_requests(input_file) if input_file is not None else [request]
        if output is not None:
            check_writable(output, overwrite=overwrite)
    extractor = _extractor(model or str(DEFAULT_RUN), batch_size, dtype, draft, constrain)
    results = extractor.extract_batch(requests)
    if input_file is None:
        sys.stdout.write(json.dumps(results[0].to_dict(), indent=2, ensure_ascii=False) + "\n")
        if results[0].error is not None:
            raise typer.Exit(1)
        return
    if output is None:
        for result in results:
            sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
    else:
        with user_errors():
            write_results(output, results, overwrite=overwrite)
    errors = sum(result.error is not None for result in results)
    error_console.print(f"{len(results)} request(s), {errors} error(s)" + (f" -> {output}" if output else ""))


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled data file (canonical JSONL/CSV).")],
    model: ModelOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report directory.")] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option("--baseline", help="Also evaluate a baseline: 'rules' (no model) or 'zero-shot'; repeatable."),
    ] = None,
    batch_size: BatchSizeOption = 16,
    dtype: DtypeOption = "auto",
    draft: DraftOption = True,
    constrain: ConstrainOption = True,
) -> None:
    """Score extractors by real generation on a labelled file: metrics.json, report.md, PNGs, and a
    side-by-side table. The zero-shot baseline uses the base model of --model's run."""
    from brianft.data.io import read_examples
    from brianft.evaluate import comparison_table, write_report
    from brianft.extract import RULES, ZERO_SHOT, evaluate_extractor

    baselines = list(dict.fromkeys(baseline or []))
    if unknown := [b for b in baselines if b not in (RULES, ZERO_SHOT)]:
        error_console.print(f"[red]error:[/red] unknown baseline {unknown[0]!r}; use 'rules' or 'zero-shot'")
        raise typer.Exit(2)
    if model is None and not baselines:
        error_console.print("[red]error:[/red] give --model RUN, --baseline rules|zero-shot, or both", highlight=False)
        raise typer.Exit(2)
    systems: list[tuple[str, str, Path]] = []  # (name, model spec, report directory)
    if model is not None:
        default = Path("evaluation") / model if model in (RULES, ZERO_SHOT) else Path(model) / "evaluation"
        systems.append((model, model, out or default))
    for name in baselines:
        if model is None:
            directory = (out / name if len(baselines) > 1 else out) if out else Path("evaluation") / name
            systems.append((name, name, directory))
        else:
            systems.append((f"baseline: {name}", name, systems[0][2] / f"baseline-{name}"))
    named: dict[str, dict] = {}
    for name, spec, directory in systems:
        extractor = _baseline_of(model, spec, batch_size, dtype, draft, constrain)
        with user_errors():
            examples = read_examples(data, extractor.canonicalizer, mode="validate")
            metrics = evaluate_extractor(extractor, examples)
            metrics["model"] = spec if spec != ZERO_SHOT else f"{ZERO_SHOT}: {extractor.source}"
            metrics["data"] = str(data)
            write_report(metrics, directory, f"{name} on {data.name}")
        named[name] = metrics
        console.print(f"{escape(name)}: report written to {escape(str(directory))}", soft_wrap=True)
    console.print(comparison_table(named), markup=False, soft_wrap=True)


@app.command()
def serve(
    model: ModelOption = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (serve.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=0, max=65535, help="Port (serve.port).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Serve the extractor over HTTP: JSON API, OpenAPI docs at /docs (see README, Serving)."""
    import os

    from brianft.extract import DEFAULT_RUN, RULES, Extractor
    from brianft.model import ModelLoadError
    from brianft.serve import resolve_api_key, run_server

    cfg = _config(config, set_)
    spec = model or str(DEFAULT_RUN)
    # A run keeps the prompt limit it was trained with; the rules take the configured one.
    limits = {"max_prompt_chars": cfg.data.max_prompt_chars} if spec == RULES else {}
    with user_errors():
        settings = resolve_api_key(cfg.serve, os.environ)
        settings.host = host if host is not None else settings.host
        settings.port = port if port is not None else settings.port
        try:
            extractor = Extractor.load(spec, batch_size=settings.max_batch_size, **limits)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{exc}; or serve the rule-based extractor: --model {RULES}") from exc
    run_server(extractor, settings)


def _baseline_of(model: str | None, spec: str, batch_size: int, dtype: str, draft: bool, constrain: bool):
    """The extractor for `spec`; a zero-shot baseline next to a run uses that run's base model."""
    from brianft.extract import ZERO_SHOT, Extractor

    if spec != ZERO_SHOT or model is None or not (Path(model) / "config.yaml").is_file():
        return _extractor(spec, batch_size, dtype, draft, constrain)
    with user_errors():
        base = load_config(Path(model) / "config.yaml").model
        return Extractor.zero_shot(base, batch_size=batch_size, dtype=dtype, draft=draft, constrain=constrain)


# ---------------------------------------------------------------------------------------------
# brianft bacalhau: the deploy stage (brianft/deploy.py)

bacalhau_app = typer.Typer(help="Run the training job on a Bacalhau network.", no_args_is_help=True)
app.add_typer(bacalhau_app, name="bacalhau")


@bacalhau_app.command("job")
def bacalhau_job(
    image: Annotated[
        str | None, typer.Option("--image", help="Docker image; default brianft:VERSION (-cuda with --gpu).")
    ] = None,
    gpu: Annotated[int, typer.Option("--gpu", help="GPUs; more than 0 trains on CUDA in the CUDA image.")] = 0,
    cpu: Annotated[str, typer.Option("--cpu", help="CPU cores: 2, 0.5 or 500m.")] = "2",
    memory: Annotated[str, typer.Option("--memory", help="Memory: 8gb, 512mb, 16GiB.")] = "8gb",
    disk: Annotated[str | None, typer.Option("--disk", help="Disk space, like --memory.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    name: Annotated[str, typer.Option("--name", help="Job name.")] = "brianft-train",
    publisher: Annotated[str, typer.Option("--publisher", help="Results: 'local' or s3://BUCKET/KEY.")] = "local",
    timeout: Annotated[int, typer.Option("--timeout", help="Execution timeout in seconds.")] = 4 * 3600,
    env: Annotated[list[str] | None, typer.Option("--env", help="Extra container variable NAME=value.")] = None,
    submit: Annotated[bool, typer.Option("--submit", help="Run it with `bacalhau job run`, not print it.")] = False,
) -> None:
    """Print the Bacalhau job (YAML) that runs the main job in the brianft image, or submit it with --submit.

    The configuration (--config, default configs/default.yaml, plus --set) is validated here and
    carried in the job as `brianft run --set ...` arguments; the run is published from /outputs/run.
    """
    from brianft.deploy import JobOptions, build_job, job_yaml
    from brianft.deploy import submit as submit_job

    options = JobOptions(
        image=image,
        gpu=gpu,
        cpu=cpu,
        memory=memory,
        disk=disk,
        config=_run_config_path(config),  # the job trains what `brianft run` here would train
        overrides=tuple(set_ or []),
        name=name,
        publisher=publisher,
        timeout_s=timeout,
        env=tuple(env or []),
    )
    with user_errors():
        job = build_job(options)
        if not submit:
            sys.stdout.write(job_yaml(job))
            return
        code = submit_job(job)
    if code != 0:
        error_console.print(f"[red]error:[/red] bacalhau job run exited with {code}", highlight=False)
        raise typer.Exit(code)


def main() -> None:
    app()
