"""The safe path from a user's request to validated intents: the API behind `brianft predict`.

An `Extractor` pairs a backend (a fine-tuned model, a plain or merged model, or the rule-based
extractor) with the canonicaliser, and never trusts what the backend says:

- a request that is not text, is empty, or is longer than `max_prompt_chars` is refused with an
  error result, and the backend is not called;
- output that cannot be parsed, or names an unknown action, is an error result with no intents;
- grounding: an address that does not occur in the request (case-insensitively) is dropped with
  a warning, so that the intent then lists it as missing; an amount, token, chain or protocol
  that no span of the request canonicalises to is kept but flagged with a warning;
- the canonicaliser's warnings (bad EIP-55 checksum, unknown chain) are passed through.

`extract` and `extract_batch` never raise on any input.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brianft.constrain import OutputGrammar
from brianft.data.spans import SpanFinder
from brianft.drafting import PrefixCache
from brianft.infer import Generated, Prediction, cut_output_error, decode_prediction
from brianft.normalize import Canonicalizer
from brianft.schema import Example, Intent
from brianft.target import TargetFormat

RULES = "rules"
ZERO_SHOT = "zero-shot"
DEFAULT_RUN = Path("runs/default")
# Fields whose canonical value must come from some span of the request (else: a warning).
_SPAN_FIELDS = ("token1", "token2", "amount", "amount_out", "chain", "dest_chain", "protocol")

# A backend turns requests into raw output text (target format or JSON), one per request, in order;
# a model backend returns `Generated` (the text and where constrained decoding overrode the model).
Backend = Callable[[list[str], int, int], list[str] | list[Generated]]  # (requests, batch_size, max_new_tokens)


@dataclass
class ExtractionResult:
    prompt: Any
    intents: list[dict[str, str]] = field(default_factory=list)
    missing: list[list[str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    output: str | None = field(default=None, repr=False)  # the backend's raw text, for debugging

    def to_dict(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else repr(self.prompt)
        prompt = prompt.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> "?"
        out: dict[str, Any] = {
            "prompt": prompt,
            "intents": self.intents,
            "missing": self.missing,
            "warnings": self.warnings,
        }
        if self.error is not None:
            out["error"] = self.error
        return out

    def prediction(self) -> Prediction:
        """The result as the evaluator's Prediction (canonical Intent objects)."""
        intents = [Intent(**intent) for intent in self.intents]
        return Prediction(text=self.output or "", intents=intents, warnings=self.warnings, error=self.error)


class Extractor:
    def __init__(
        self,
        backend: Backend,
        canonicalizer: Canonicalizer | None = None,
        *,
        max_prompt_chars: int = 1000,
        max_new_tokens: int = 192,
        batch_size: int = 16,
        source: str = "",
        base_model: str = "",
        adapter: str | None = None,
    ) -> None:
        self.backend = backend
        self.canonicalizer = canonicalizer or Canonicalizer.default()
        self.max_prompt_chars = max_prompt_chars
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.source = source  # for people: where the weights came from
        self.base_model = base_model  # for machines (e.g. the server's /v1/info): the base and the adapter used
        self.adapter = adapter
        # the backend's own, where it constrains decoding: its memo then serves decoding's checks too
        backend_spans = getattr(backend, "spans", None)
        self._spans = backend_spans if isinstance(backend_spans, SpanFinder) else SpanFinder(self.canonicalizer)

    # ----------------------------------------------------------------------- constructors

    @classmethod
    def from_run(
        cls, run_dir: Path | str, *, dtype: str = "auto", draft: bool = True, constrain: bool = True, **kwargs: Any
    ) -> Extractor:
        """A finished training run: base model + LoRA adapter (merged), with the run's registry and
        limits. `draft` verifies the rule-based guess of each output in bulk: faster, same output.
        `constrain` lets the model write only valid outputs whose values the request contains
        (`brianft.constrain`)."""
        from brianft.config import ConfigError, load_config
        from brianft.model import ModelLoadError, load_run
        from brianft.normalize import Registry

        run_dir = Path(run_dir)
        loaded = load_run(run_dir)  # checks the run first, with a clear message
        try:
            cfg = load_config(run_dir / "config.yaml")
        except ConfigError as exc:  # pragma: no cover - load_run already read it
            raise ModelLoadError(f"run {run_dir}: {exc}") from exc
        kwargs.setdefault("max_prompt_chars", cfg.data.max_prompt_chars)
        kwargs.setdefault("max_new_tokens", cfg.train.max_new_tokens)
        canonicalizer = Canonicalizer(Registry.load(cfg.data.registry_dirs))
        kwargs.setdefault("base_model", cfg.model.base)
        kwargs.setdefault("adapter", str(run_dir / "adapter"))
        backend, inference = _model_backend(
            loaded, canonicalizer, dtype=dtype, draft=draft, constrain=constrain, fmt=cfg.data.target_format
        )
        return cls(backend, canonicalizer, source=f"{loaded.source}; {inference}", **kwargs)

    @classmethod
    def from_model_dir(cls, path: Path | str, **kwargs: Any) -> Extractor:
        """A model directory without an adapter: a merged export (which keeps its run's
        configuration: target format, registries), or a base model alone."""
        from brianft.config import ModelConfig, load_config
        from brianft.export import RUN_CONFIG_NAME
        from brianft.normalize import Registry

        if (run_config := Path(path) / RUN_CONFIG_NAME).is_file():
            data = load_config(run_config).data
            kwargs.setdefault("fmt", data.target_format)
            kwargs.setdefault("canonicalizer", Canonicalizer(Registry.load(data.registry_dirs)))
        return cls.from_base_model(ModelConfig(base=str(path)), **kwargs)

    @classmethod
    def from_base_model(
        cls,
        model_cfg: Any,
        *,
        dtype: str = "auto",
        draft: bool = True,
        constrain: bool = True,
        few_shot: bool = False,
        fmt: TargetFormat = "fields",
        canonicalizer: Canonicalizer | None = None,
        **kwargs: Any,
    ) -> Extractor:
        """The model a `ModelConfig` names, with no adapter. `few_shot` prompts it with worked
        examples of the output format (the zero-shot baseline) instead of the fine-tuning prompt."""
        from brianft.model import load_base_model

        loaded = load_base_model(model_cfg)
        canonicalizer = canonicalizer or Canonicalizer.default()
        backend, inference = _model_backend(
            loaded, canonicalizer, dtype=dtype, draft=draft, constrain=constrain, few_shot=few_shot, fmt=fmt
        )
        source = f"{loaded.source} (few-shot prompt, no adapter)" if few_shot else loaded.source
        source = f"{source}; {inference}"
        kwargs.setdefault("base_model", model_cfg.base)
        return cls(backend, canonicalizer, source=source, **kwargs)

    @classmethod
    def zero_shot(cls, model_cfg: Any = None, **kwargs: Any) -> Extractor:
        """The base model (default: the bundled one) prompted with a few examples, no adapter."""
        from brianft.config import ModelConfig

        return cls.from_base_model(model_cfg or ModelConfig(), few_shot=True, **kwargs)

    @classmethod
    def rules(cls, canonicalizer: Canonicalizer | None = None, **kwargs: Any) -> Extractor:
        """The rule-based extractor: no model, deterministic."""
        from brianft.rules import RulesExtractor

        rules = RulesExtractor(canonicalizer)

        def backend(requests: list[str], _batch_size: int, _max_new_tokens: int) -> list[str]:
            return [rules.extract_text(request) for request in requests]

        kwargs.setdefault("base_model", RULES)
        return cls(backend, rules.canonicalizer, source=RULES, **kwargs)

    @classmethod
    def load(cls, spec: str | Path = DEFAULT_RUN, **kwargs: Any) -> Extractor:
        """`rules`, `zero-shot`, a training run directory, or a (merged) model directory."""
        if str(spec) == RULES:
            model_only = ("dtype", "draft", "constrain")  # options of model backends; the rules have no model
            return cls.rules(**{k: v for k, v in kwargs.items() if k not in model_only})
        if str(spec) == ZERO_SHOT:
            return cls.zero_shot(**kwargs)
        path = Path(spec)
        if path.is_dir() and not (path / "adapter").exists() and (path / "config.json").is_file():
            return cls.from_model_dir(path, **kwargs)
        return cls.from_run(path, **kwargs)

    # ----------------------------------------------------------------------- extraction

    def extract(self, text: Any) -> ExtractionResult:
        return self.extract_batch([text])[0]

    def extract_batch(self, texts: Sequence[Any]) -> list[ExtractionResult]:
        """One result per text, in order. Refused texts never reach the backend."""
        results: list[ExtractionResult | None] = [None] * len(texts)
        accepted: list[int] = []
        for index, text in enumerate(texts):
            if (refused := self.refused(text)) is not None:
                results[index] = refused
            else:
                accepted.append(index)
        if accepted:
            outputs = self.backend([texts[i] for i in accepted], self.batch_size, self.max_new_tokens)
            if len(outputs) != len(accepted):
                raise RuntimeError(f"backend returned {len(outputs)} outputs for {len(accepted)} requests")
            for index, output in zip(accepted, outputs, strict=True):
                if isinstance(output, Generated):
                    results[index] = self.decode_generated(texts[index], output)
                else:
                    results[index] = self.decode(texts[index], output)
        return results  # type: ignore[return-value]

    def refused(self, text: Any) -> ExtractionResult | None:
        """The error result of a request refused before any model call, or None."""
        problem = self.refusal(text)
        return None if problem is None else ExtractionResult(prompt=text, error=problem)

    def refusal(self, text: Any) -> str | None:
        """Why a request is refused before any model call, or None."""
        if not isinstance(text, str):
            return f"the request must be text, got {type(text).__name__}"
        if not text.strip():
            return "the request is empty"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "the request is not valid Unicode text (it holds a lone surrogate)"
        if len(text) > self.max_prompt_chars:
            return f"the request is {len(text)} characters long; the limit is {self.max_prompt_chars}"
        return None

    def stream(self, max_rows: int | None = None) -> ExtractionStream | None:
        """Continuous batching (the server): requests join while earlier ones are still being
        decoded, and each is answered as soon as it is done. None where the backend cannot do
        that (the rules, an encoder-decoder model): call `extract_batch` then."""
        start = getattr(self.backend, "stream", None)
        generation = start(max_rows or self.batch_size, self.max_new_tokens) if start else None
        return ExtractionStream(self, generation) if generation is not None else None

    def decode_generated(self, prompt: str, generated: Generated) -> ExtractionResult:
        """`decode` of a model's output; one stopped at the token limit may lack intents or fields,
        so it is an error, never a plan."""
        if generated.cut:
            return ExtractionResult(
                prompt=prompt,
                error=cut_output_error(self.max_new_tokens),
                output=generated.text,
            )
        return self.decode(prompt, generated.text, notes=generated.notes)

    def decode(self, prompt: str, output: Any, notes: Sequence[str] = ()) -> ExtractionResult:
        """Parse, canonicalise and ground the backend's raw output for `prompt`. `notes`: where
        constrained decoding refused the model's own choice, passed on as warnings."""
        prediction = decode_prediction(output if isinstance(output, str) else "", self.canonicalizer)
        raw = output if isinstance(output, str) else None
        if prediction.error is not None:
            return ExtractionResult(
                prompt=prompt,
                warnings=list(prediction.warnings),
                error=f"malformed model output: {prediction.error}",
                output=raw,
            )
        intents, warnings = ground(prompt, prediction.intents, self._spans)
        constrained = [f"decoding: {note}" for note in notes]
        return ExtractionResult(
            prompt=prompt,
            intents=[intent.to_dict() for intent in intents],
            missing=[intent.missing() for intent in intents],
            warnings=[*prediction.warnings, *warnings, *constrained, *self._unused_warning(prompt, raw or "", intents)],
            output=raw,
        )

    def _unused_warning(self, prompt: str, output: str, intents: Sequence[Intent]) -> list[str]:
        """A warning where a plan leaves out an amount, address or protocol the request names: a
        step may be missing (a third of the wrong outputs on the dev sets, one in a hundred right
        ones). Not for an empty answer: it moves nothing, and questions name values in passing
        ("how does staking with lido work?")."""
        if not intents:
            return []
        unused = list(dict.fromkeys(OutputGrammar.for_request(prompt, self._spans).unused(output)))
        unused = [text for text in unused if not any(text in other for other in unused if other != text)]
        if not unused:
            return []
        names = ", ".join(repr(text) for text in unused)
        return [f"the request names {names}, which no intent uses; check that no step is missing"]


def ground(prompt: str, intents: Sequence[Intent], spans: SpanFinder) -> tuple[list[Intent], list[str]]:
    """Drop addresses absent from the request; flag values no span of it supports."""
    out: list[Intent] = []
    warnings: list[str] = []
    for number, intent in enumerate(intents, start=1):
        if intent.address is not None and not _mentions(prompt, intent.address):
            warnings.append(
                f"intent {number}: address {intent.address!r} does not occur in the request; "
                "dropped (ask the user for it)"
            )
            intent = intent.model_copy(update={"address": None})
        for name in _SPAN_FIELDS:
            value = getattr(intent, name)
            if value is not None and spans.find(prompt, name, value) is None:
                warnings.append(
                    f"intent {number}: {name} {value!r} is not stated in the request; check it before executing"
                )
        out.append(intent)
    return out, warnings


def _mentions(prompt: str, address: str) -> bool:
    """Whether `address` occurs in `prompt` as a whole word, case-insensitively ("a.eth" is not
    in "aa.eth", "0xab...cd" is not in a longer hex string)."""
    pattern = rf"(?<![\w.\-]){re.escape(address)}(?![\w\-]|\.\w)"
    return re.search(pattern, prompt, flags=re.IGNORECASE) is not None


def _model_backend(
    loaded,
    canonicalizer: Canonicalizer,
    *,
    dtype: str,
    draft: bool,
    constrain: bool,
    few_shot: bool = False,
    fmt: TargetFormat = "fields",
) -> tuple[ModelBackend, str]:
    """The backend, and how it runs the model (for people and /v1/info). `fmt`: the target
    format the model was trained to write."""
    from brianft.cpus import cap_torch_threads
    from brianft.infer import prepare_for_inference
    from brianft.rules import RulesExtractor

    cap_torch_threads()  # in a container limited to N CPUs, torch would start one thread per host core
    model = prepare_for_inference(loaded.model, dtype)
    rules = RulesExtractor(canonicalizer) if draft else None
    spans = SpanFinder(canonicalizer) if constrain else None
    weights = str(next(model.parameters()).dtype).removeprefix("torch.")
    inference = f"inference: merged {weights} weights, " + ("rule drafts verified" if draft else "no drafts")
    inference += ", output constrained to the request" if constrain else ", unconstrained output"
    backend = ModelBackend(model, loaded.tokenizer, loaded.is_seq2seq, rules, spans, few_shot, fmt)
    return backend, inference


@dataclass(frozen=True)
class ModelBackend:
    """A model as a `Backend`, with what each request's generation needs: the rules' draft of its
    output, the grammar of its valid outputs, the prompt style."""

    model: Any
    tokenizer: Any
    is_seq2seq: bool
    rules: Any  # RulesExtractor, or None: no drafts
    spans: SpanFinder | None  # None: unconstrained output
    few_shot: bool
    fmt: TargetFormat
    prefix: PrefixCache = field(default_factory=PrefixCache)  # the prompts' shared opening, computed once

    def __call__(self, requests: list[str], batch_size: int, max_new_tokens: int) -> list[Generated]:
        from brianft.infer import generate

        return generate(
            self.model,
            self.tokenizer,
            requests,
            is_seq2seq=self.is_seq2seq,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            prefix=self.prefix,
            **self.options(requests),
        )

    def options(self, requests: list[str]) -> dict[str, Any]:
        from brianft.constrain import DRAFT_TIEBREAK_NATS, request_grammars

        return {
            "drafts": rule_drafts(self.rules, requests, self.fmt) if self.rules else None,
            "grammars": request_grammars(requests, self.spans, self.fmt) if self.spans else None,
            "few_shot": self.few_shot,
            "draft_tiebreak": 0.0 if self.few_shot else DRAFT_TIEBREAK_NATS,  # zero-shot: the model's alone
        }

    def stream(self, max_rows: int, max_new_tokens: int):
        """A `GenerationStream` over this model, or None where the model cannot stream (seq2seq)."""
        from brianft.infer import GenerationStream

        return GenerationStream.for_model(self.model, self.tokenizer, max_rows, max_new_tokens, self.prefix)


def rule_drafts(rules, requests: Sequence[str], fmt: TargetFormat = "fields") -> list[str]:
    """The rule-based guess of each output, to verify in bulk (brianft.drafting). A draft only
    changes speed, so a request the rules choke on gets no draft rather than an error."""
    drafts = []
    for request in requests:
        try:
            drafts.append(rules.extract_text(request, fmt))
        except Exception:  # noqa: BLE001 - a draft is an optimisation, never a reason to fail
            drafts.append("")
    return drafts


# --------------------------------------------------------------------------- files


def read_requests(path: Path) -> list[str]:
    """Requests of a file: `.jsonl` with a "prompt" field per line, else one request a line.
    Blank lines are skipped; a bad JSONL line raises ValueError with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc}") from exc
    if path.suffix.lower() != ".jsonl":
        return [line for line in lines if line.strip()]
    requests = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f'{path}:{number}: expected an object with a "prompt" string')
        requests.append(record["prompt"])
    return requests


def check_writable(path: Path, *, overwrite: bool) -> None:
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def write_results(path: Path, results: Sequence[ExtractionResult], *, overwrite: bool = False) -> int:
    """One JSON line per result, written atomically; refuses to replace a file unless told to."""
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for result in results:
            handle.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(results)


# --------------------------------------------------------------------------- evaluation


def evaluate_extractor(extractor: Extractor, examples: Sequence[Example]) -> dict:
    """detailed_metrics of the extractor on labelled examples, by real extraction. Each batch is
    timed; a request's latency is its batch's time divided by the batch size."""
    from brianft.evaluate import detailed_metrics

    predictions: list[Prediction] = []
    latencies: list[float] = []
    size = max(1, extractor.batch_size)
    for start in range(0, len(examples), size):
        batch = [example.prompt for example in examples[start : start + size]]
        began = time.perf_counter()
        results = extractor.extract_batch(batch)
        elapsed = time.perf_counter() - began
        predictions += [result.prediction() for result in results]
        latencies += [elapsed / len(batch)] * len(batch)
    return detailed_metrics(examples, predictions, latencies)


@dataclass
class ExtractionTicket:
    """One request in an `ExtractionStream`: `result()` once `done`."""

    prompt: Any
    extractor: Extractor
    handle: Any = None  # GenerationHandle; None: refused before reaching the model
    refused: ExtractionResult | None = None

    @property
    def done(self) -> bool:
        return self.handle is None or self.handle.done

    def result(self) -> ExtractionResult:
        if self.handle is None:
            return self.refused  # type: ignore[return-value]
        generated = self.handle.result()
        return self.extractor.decode_generated(self.prompt, generated)


class ExtractionStream:
    """`Extractor.stream()`: `add` admits requests (one forward pass over them; a request whose
    drafted output the model confirms is done at once), `step` advances the unfinished ones by
    one pass. The same checks as `extract_batch`: refused requests never reach the model."""

    def __init__(self, extractor: Extractor, generation) -> None:
        self.extractor, self.generation = extractor, generation

    @property
    def busy(self) -> bool:
        return self.generation.busy

    def add(self, texts: Sequence[Any]) -> list[ExtractionTicket]:
        tickets = []
        for text in texts:
            tickets.append(ExtractionTicket(text, self.extractor, refused=self.extractor.refused(text)))
        accepted = [ticket for ticket in tickets if ticket.refused is None]
        if accepted:
            prompts = [ticket.prompt for ticket in accepted]
            handles = self.generation.add(prompts, **self.extractor.backend.options(prompts))
            for ticket, handle in zip(accepted, handles, strict=True):
                ticket.handle = handle
        return tickets

    def step(self) -> None:
        self.generation.step()
