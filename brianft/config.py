"""One typed configuration: loaded from YAML, overridden by `--set key=value`, validated once.

Every stage receives the part it needs as an argument; nothing reads configuration from
globals or the environment behind the caller's back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from brianft.target import TargetFormat


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message says which and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where examples come from and how they are split."""

    curated: bool = True
    written: bool = Field(
        True, description="the shipped hand-written requests kept for training and validation only (never test)"
    )
    curated_repeat: int = Field(
        1, ge=1, le=10, description="times the hand-written (curated and written) training examples are seen per epoch"
    )
    files: list[Path] = Field(default_factory=list, description="user data files (JSONL, CSV, Brian format)")
    synthetic_train: int = Field(2000, ge=0, description="synthetic examples from training template families")
    synthetic_test: int = Field(200, ge=0, description="synthetic test examples from held-out families")
    seed: int = 0
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.2, ge=0.0, lt=0.5, description="share of curated and user data kept for test")
    max_prompt_chars: int = Field(1000, ge=16)
    registry_dirs: list[Path] = Field(default_factory=list, description="extra registry YAML directories")
    target_format: TargetFormat = Field(
        "fields", description="what the model learns to write: 'fields' (key=value) or 'slots' (brianft.target)"
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave at least 10% for training")
        return self


class LoraConfig(_Strict):
    r: int = Field(16, ge=1, le=512)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # None: every linear layer of the architecture except the output head (peft's "all-linear").
    target_modules: list[str] | None = None
    top_layers: int | None = Field(None, ge=1, description="adapt only the last N blocks (faster on CPU)")


class ModelConfig(_Strict):
    """The base model: the bundled default, a Hugging Face model id, or a local directory."""

    base: str = Field("smollm2-135m-instruct", min_length=1)
    cache_dir: Path = Field(Path("~/.cache/brianft"), description="where converted base models are kept")
    dtype: Literal["float32", "bfloat16"] = "float32"
    trust_remote_code: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)


class TrainConfig(_Strict):
    """The training loop. Steps count optimizer updates (micro-batches x grad_accum x ranks)."""

    output_dir: Path = Path("runs/default")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(16, ge=1, description="examples per micro-batch and process")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    neftune_alpha: float = Field(
        0.0, ge=0, description="NEFTune: noise on the input embeddings while training (the paper uses 5); 0: off"
    )
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: the CPUs this process may use")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="bfloat16 autocast for the forward pass; auto: where the hardware computes bf16 natively"
        " (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX), else float32",
    )
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="attention kernel while training; auto: eager on a CPU, the model's own elsewhere"
    )
    log_every: int = Field(5, ge=1)
    eval_every: int = Field(0, ge=0, description="steps between validation evaluations; 0: at the end only")
    eval_examples: int = Field(64, ge=1, description="validation examples generated at each evaluation")
    eval_batch_size: int = Field(32, ge=1)
    # A 0x address is ~37 tokens: two transfers to addresses need ~115 (at 96, 3 of the 250 dev requests were cut).
    max_new_tokens: int = Field(192, ge=8)
    save_every: int = Field(50, ge=1, description="steps between resumable checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    test_eval: bool = Field(True, description="evaluate on the test split when training ends")


class ServeConfig(_Strict):
    """The HTTP server (`brianft serve`). The prompt size limit is the extractor's (data.max_prompt_chars)."""

    host: str = Field("127.0.0.1", min_length=1, description="0.0.0.0 exposes the server to the network")
    port: int = Field(8000, ge=0, le=65535, description="0: any free port")
    max_batch_size: int = Field(16, ge=1, le=1024, description="most prompts extracted together in one model call")
    max_wait_ms: float = Field(10.0, ge=0, le=1000, description="how long an idle server waits for a batch to fill")
    continuous_batching: bool = Field(
        True, description="prompts join the running batch between forward passes (decoder-only models)"
    )
    max_prompts_per_request: int = Field(64, ge=1, le=10_000, description="most prompts in one batch request")
    max_queued_prompts: int = Field(
        1024, ge=1, le=1_000_000, description="prompts waiting for the model; more are refused with 503 (overload)"
    )
    # SecretStr: the key is masked in repr, logs and dumped configs.
    api_key: SecretStr | None = Field(None, min_length=8, description="require this key on /v1 and /api")
    api_key_env: str | None = Field(
        "BRIANFT_API_KEY", min_length=1, description="environment variable read for the key when api_key is unset"
    )
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty: CORS off")
    log_prompts: bool = Field(False, description="include prompt text in request logs")

    @model_validator(mode="after")
    def _not_a_masked_key(self) -> ServeConfig:
        # Older runs' config.yaml files hold the key as pydantic masks it; served from such a
        # file, the mask itself would have become the key, and the mask is public.
        if self.api_key is not None and set(self.api_key.get_secret_value()) == {"*"}:
            raise ValueError(
                "api_key is a masked placeholder ('**********'), not a key: set the real key or BRIANFT_API_KEY"
            )
        return self


class Config(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); values are read as YAML scalars/lists."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> Config:
    """The validated configuration from an optional YAML file plus `key=value` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping of sections")
        tree = loaded or {}
    for override in overrides or []:
        _set_dotted(tree, *parse_override(override))
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{source}:\n" + "\n".join(lines)) from exc


def dump_config(config: Config) -> str:
    """The configuration as YAML, for a run directory. Secrets are left out (the API key is
    written as null): a run directory is shared and copied, and a key belongs in the environment."""
    data = config.model_dump(mode="json")
    data["serve"]["api_key"] = None
    return yaml.safe_dump(data, sort_keys=False)
