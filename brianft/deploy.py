"""The deploy stage: a Bacalhau job that runs the main training job in the brianft image.

`build_job` returns the job as a dict in Bacalhau's v1 job format (what `bacalhau job run FILE`
reads); `job_yaml` prints it; `submit` hands it to the bacalhau CLI. Field names follow
Bacalhau's Go models; `brianft/resources/bacalhau/job.schema.json` records them and the tests
check every generated job against it.

The training configuration travels inside the job as `--set key=value` arguments of
`brianft run`, one for every setting of the locally validated configuration. That keeps the
job self-contained (nothing to upload) and independent of the configs/default.yaml baked into
the image, and it avoids an InputSource file: Bacalhau writes inline sources as mode-0600
temporary files of the node's user, which the image's non-root user may not be able to read.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from brianft import __version__
from brianft.config import Config, load_config

# Bacalhau publishes what the task leaves here; the Dockerfile's default command writes the run below it.
OUTPUTS = "/outputs"
RUN_DIR = f"{OUTPUTS}/run"
IMAGE_WORKDIR = "/app"
CPU_IMAGE = f"brianft:{__version__}"
CUDA_IMAGE = f"brianft:{__version__}-cuda"
INSTALL_HINT = (
    "the bacalhau CLI is not installed (not found on PATH). Install it with "
    "`curl -sL https://get.bacalhau.org/install.sh | bash` (see https://docs.bacalhau.org), "
    "or save the job with `brianft bacalhau job > job.yaml` and run `bacalhau job run job.yaml` elsewhere"
)

# Kubernetes CPU quantities (what Bacalhau parses): whole or decimal cores, or millicores.
_CPU = re.compile(r"^(?P<cores>[0-9]+(?:\.[0-9]+)?)$|^(?P<milli>[0-9]+)m$")
# go-humanize byte sizes: a number and an optional unit (b, k, kb, kib, ... e, eb, eib), any case.
_SIZE = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?) ?(?P<unit>[kmgtpe]i?b?|b)?$", re.IGNORECASE)
_S3 = re.compile(r"^s3://(?P<bucket>[^/]+)/?(?P<key>.*)$")


class JobSpecError(ValueError):
    """A job option that Bacalhau would reject or misread; the message says which and why."""


@dataclass(frozen=True)
class JobOptions:
    """What a user chooses about the job; everything else follows from it."""

    image: str | None = None  # None: the CPU or CUDA image of this version, by `gpu`
    gpu: int = 0
    cpu: str = "2"
    memory: str = "8gb"
    disk: str | None = None
    config: Path | None = None
    overrides: tuple[str, ...] = ()
    name: str = "brianft-train"
    publisher: str = "local"  # local, or s3://BUCKET/KEY
    timeout_s: int = 4 * 3600
    env: tuple[str, ...] = ()  # extra KEY=VALUE for the container


def cpu_cores(text: str) -> float:
    """'2' -> 2.0, '500m' -> 0.5; a positive Kubernetes CPU quantity or JobSpecError."""
    match = _CPU.match(str(text).strip())
    if match is None:
        raise JobSpecError(f"--cpu {text!r} is not a CPU count like 2, 0.5 or 500m")
    cores = float(match["cores"]) if match["cores"] is not None else int(match["milli"]) / 1000
    if cores <= 0:
        raise JobSpecError(f"--cpu {text!r} must be more than zero")
    return cores


def byte_size(text: str, option: str) -> str:
    """A positive go-humanize size, normalised the way Bacalhau does (lower case, no spaces): '8 GB' -> '8gb'."""
    normalised = str(text).strip().lower().replace(" ", "")
    match = _SIZE.match(normalised)
    if match is None:
        raise JobSpecError(f"{option} {text!r} is not a size like 8gb, 512mb or 16GiB")
    if float(match["number"]) <= 0:
        raise JobSpecError(f"{option} {text!r} must be more than zero")
    return normalised


def _publisher(text: str) -> dict[str, Any]:
    if text == "local":
        return {"Type": "local"}
    match = _S3.match(text)
    if match is None or not match["bucket"]:
        raise JobSpecError(f"--publisher {text!r} must be 'local' or s3://BUCKET/KEY")
    # Bacalhau fills {jobID} in; without a key every job would overwrite the same object.
    return {"Type": "s3", "Params": {"Bucket": match["bucket"], "Key": match["key"] or "brianft/{jobID}/"}}


def _validate_env(pairs: tuple[str, ...]) -> list[str]:
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise JobSpecError(f"--env {pair!r} must look like NAME=value")
    return list(pairs)


def flatten_config(config: Config) -> list[str]:
    """Every setting as 'section.key=value', values in JSON (which `--set` reads as YAML, exactly)."""
    out: list[str] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            out.append(f"{prefix}={json.dumps(node)}")

    walk("", config.model_dump(mode="json"))
    return out


def training_config(options: JobOptions, threads: int | None) -> Config:
    """The local configuration with the container's paths and device; validated here, not on the network."""
    device = "cuda" if options.gpu > 0 else "cpu"
    placement = [f"train.output_dir={RUN_DIR}", f"train.device={device}"]
    if threads is not None:
        placement.append(f"train.threads={threads}")
    return load_config(options.config, [*options.overrides, *placement])


def build_job(options: JobOptions) -> dict[str, Any]:
    """The Bacalhau job (a dict in the v1 job format) that trains with `options`."""
    if options.gpu < 0:
        raise JobSpecError(f"--gpu {options.gpu} must be 0 or more")
    if options.timeout_s <= 0:
        raise JobSpecError(f"--timeout {options.timeout_s} must be more than zero seconds")
    cores = cpu_cores(options.cpu)
    # Explicit, though training reads the cgroup quota itself (brianft.cpus): some runtimes hide it.
    threads = max(1, int(cores))
    config = training_config(options, threads)
    wanted: dict[str, str] = {"CPU": options.cpu.strip(), "Memory": byte_size(options.memory, "--memory")}
    if options.disk is not None:
        wanted["Disk"] = byte_size(options.disk, "--disk")
    if options.gpu > 0:
        wanted["GPU"] = str(options.gpu)
    image = options.image or (CUDA_IMAGE if options.gpu > 0 else CPU_IMAGE)
    env = [f"OMP_NUM_THREADS={threads}", f"MKL_NUM_THREADS={threads}", *_validate_env(options.env)]
    task = {
        "Name": "train",
        "Engine": {
            "Type": "docker",
            "Params": {
                "Image": image,
                "Entrypoint": ["brianft"],
                "Parameters": ["run", *[arg for pair in flatten_config(config) for arg in ("--set", pair)]],
                "EnvironmentVariables": env,
                "WorkingDirectory": IMAGE_WORKDIR,
            },
        },
        "Resources": wanted,
        # The base model is baked into the image and nothing is downloaded: the job needs no network.
        "Network": {"Type": "None"},
        "ResultPaths": [{"Name": "outputs", "Path": OUTPUTS}],
        "Publisher": _publisher(options.publisher),
        "Timeouts": {"ExecutionTimeout": options.timeout_s},
    }
    return {
        "Name": options.name,
        "Type": "batch",
        "Count": 1,
        "Labels": {"app": "brianft", "brianft-version": __version__},
        "Tasks": [task],
    }


def job_yaml(job: dict[str, Any]) -> str:
    # Key order kept as built (Name, Type... like Bacalhau's docs); strings such as CPU "2" stay quoted.
    return yaml.safe_dump(job, sort_keys=False, default_flow_style=False, width=1000)


def job_schema() -> dict[str, Any]:
    """The JSON Schema of the job fields Bacalhau accepts (see the file's $comment for its sources)."""
    text = resources.files("brianft").joinpath("resources/bacalhau/job.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def submit(job: dict[str, Any]) -> int:
    """Run `bacalhau job run FILE` on the job; its exit code. FileNotFoundError if the CLI is missing."""
    executable = shutil.which("bacalhau")
    if executable is None:
        raise FileNotFoundError(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="brianft-bacalhau-") as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(job_yaml(job), encoding="utf-8")
        # No shell: the path and arguments are passed as they are.
        return subprocess.run([executable, "job", "run", str(path)], check=False).returncode
