"""The HTTP server behind `brianft serve`: an `Extractor` as a small JSON API.

Endpoints (OpenAPI docs at /docs and /redoc, schema at /openapi.json):

- `POST /v1/extract` {"prompt"} -> {"prompt", "intents", "missing", "warnings"} (+ "error")
- `POST /v1/extract/batch` {"prompts": [...]} -> a list of the same, in order
- `POST /api/v0/agent/parameters-extraction` {"prompt"} -> {"result": {"prompt", "completion": [intents]}}
  for Brian-style clients
- `GET /health`, `GET /v1/info`

Status codes:

- 200 with "error" (and no intents) in /v1 when the prompt was fine but the model's output could not
  be read: the request was valid, and the answer says that nothing in it may be acted upon. In a
  batch, prompts the extractor refuses (empty, too long) are such per-item error results too, as in
  `brianft predict --input`. The Brian view has no error field, so there this is a 500.
- 422 {"error", "detail"}: invalid JSON, a missing field, a wrong type, an unknown field, or (single
  prompt) a prompt the extractor refuses: empty, over `data.max_prompt_chars`, lone surrogates.
- 413: more prompts in one batch request than `serve.max_prompts_per_request`, or a body larger
  than any valid request can be (`max_body_bytes`; refused before it is read into memory).
- 401: an API key is configured and the request lacks it (/health and the docs stay open).
- 500: the extractor raised; the answer names no internals, the log has the traceback, and the
  server keeps serving.

Concurrent requests are grouped by a `MicroBatcher` into one `Extractor.extract_batch` call that runs
in a single worker thread (the model is not thread-safe, and generation must not block the event loop).
With a decoder-only model and `serve.continuous_batching` (the default), prompts join the running
batch between forward passes and each is answered as soon as it is done (`Extractor.stream`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from brianft import __version__
from brianft.config import ConfigError, ServeConfig
from brianft.extract import ExtractionResult, ExtractionStream, ExtractionTicket, Extractor
from brianft.schema import SCHEMA_VERSION, Intent

logger = logging.getLogger("brianft.serve")

# What the extractor gave one prompt: its result, or the exception its backend raised.
Outcome = ExtractionResult | Exception

# --------------------------------------------------------------------------- micro-batching


@dataclass
class _Job:
    prompt: str
    future: asyncio.Future[tuple[Outcome, int]]  # (outcome, size of the batch the prompt ran in)


@dataclass
class _Active:
    job: _Job
    ticket: ExtractionTicket | None  # None until admitted
    size: int  # prompts admitted with it


class Overloaded(RuntimeError):
    """More prompts are waiting for the model than the server is configured to hold."""


# Under continuous batching, a few prompts that arrive while others decode wait up to this many
# passes for company (benchmarks/serve_load.py, against micro-batches: +1-9% requests/s, p95 -15-28%).
JOIN_AFTER_PASSES = 4


class MicroBatcher:
    """Groups prompts of concurrent requests into one `extract` call, run in one worker thread.

    Prompts that arrive while a batch runs queue up and form the next one (at most `max_batch_size`)
    without further waiting; a prompt that finds the worker idle waits at most `max_wait_ms` for company.

    With `stream` (a factory of `Extractor.stream()`s), batching is continuous: each turn of the
    worker admits the prompts queued meanwhile with one forward pass over them (once a quarter of
    `max_batch_size` has queued, or after JOIN_AFTER_PASSES passes), then advances every
    unfinished prompt by one pass, and answers each prompt as soon as it is done. A batch no
    longer waits for its slowest prompt (a wrong draft costs it a few more passes), and the
    clients answered early send their next requests while those passes run.
    """

    def __init__(
        self,
        extract: Callable[[list[str]], list[ExtractionResult]],
        max_batch_size: int,
        max_wait_ms: float,
        max_queued: int = 1024,
        stream: Callable[[], ExtractionStream | None] | None = None,
    ) -> None:
        self._extract = extract
        self._new_stream = stream
        self.continuous = False  # set once the worker has a stream
        self._passes_waited = 0  # passes the queued prompts have waited to join (continuous batching)
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self.max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()  # replaced in start(): a queue belongs to one loop
        # One thread: the model is not thread-safe, and one batch at a time is what batching is for.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brianft-extract")
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="brianft-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _fail([self._queue.get_nowait()], RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, prompts: Sequence[str]) -> list[tuple[Outcome, int]]:
        """The outcome of every prompt, in order, with the size of the batch it ran in."""
        if not self.running:
            raise RuntimeError("the extraction worker is not running")
        if self._queue.qsize() + len(prompts) > self.max_queued:
            # Shed load rather than let every client's wait grow without bound.
            raise Overloaded(f"the server is busy ({self._queue.qsize()} prompts waiting); retry shortly")
        loop = asyncio.get_running_loop()
        jobs = [_Job(prompt, loop.create_future()) for prompt in prompts]
        for job in jobs:
            self._queue.put_nowait(job)
        # If the client goes away, gather cancels the futures and the worker skips them.
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def _run(self) -> None:
        if self._new_stream is not None and (stream := self._new_stream()) is not None:
            self.continuous = True
            await self._run_continuous(stream)
            return
        loop = asyncio.get_running_loop()
        while True:
            jobs = [job for job in await self._collect() if not job.future.done()]
            if not jobs:
                continue
            try:
                outcomes = await loop.run_in_executor(self._executor, self._isolated, [job.prompt for job in jobs])
            except BaseException as exc:  # cancelled (shutdown), or a bug here: never leave a client hanging
                _fail(jobs, exc if isinstance(exc, Exception) else RuntimeError("the server is shutting down"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for job, outcome in zip(jobs, outcomes, strict=True):
                if not job.future.done():
                    job.future.set_result((outcome, len(jobs)))

    async def _run_continuous(self, stream: ExtractionStream) -> None:
        loop = asyncio.get_running_loop()
        active: list[_Active] = []
        jobs: list[_Job] = []
        try:
            while True:
                jobs = [job for job in await self._collect(idle=not active) if not job.future.done()]
                if not jobs and not active:
                    continue
                try:
                    stream, active, finished = await loop.run_in_executor(
                        self._executor, self._turn, stream, jobs, active
                    )
                except Exception as exc:  # a bug in the recovery itself: fail these prompts, keep serving
                    _fail([*jobs, *(entry.job for entry in active)], exc)
                    stream, active, finished = self._new_stream() or stream, [], []
                jobs = []
                for job, outcome, size in finished:
                    if not job.future.done():
                        job.future.set_result((outcome, size))
        except BaseException:  # cancelled (shutdown): never leave a client hanging
            _fail([*jobs, *(entry.job for entry in active)], RuntimeError("the server is shutting down"))
            raise

    def _few_to_join(self) -> bool:
        """While prompts decode, whether the queued ones should wait another pass for company: a
        pass that admits one or two prompts uses the cores far less well than one admitting
        several, but no prompt waits more than JOIN_AFTER_PASSES passes."""
        queued = self._queue.qsize()
        if queued and (queued >= max(2, self.max_batch_size // 4) or self._passes_waited >= JOIN_AFTER_PASSES):
            self._passes_waited = 0
            return False
        self._passes_waited = self._passes_waited + 1 if queued else 0
        return True

    def _turn(
        self, stream: ExtractionStream, jobs: list[_Job], active: list[_Active]
    ) -> tuple[ExtractionStream, list[_Active], list[tuple[_Job, Outcome, int]]]:
        """Runs in the worker thread: admit `jobs`, advance everything unfinished by one pass, and
        return the stream, what is still running, and what finished. If the stream fails, every
        prompt in it is rerun through `extract` (each alone if need be) and a new stream starts."""
        admitted = [_Active(job, None, len(jobs)) for job in jobs]
        try:
            for entry, ticket in zip(admitted, stream.add([job.prompt for job in jobs]) if jobs else [], strict=True):
                entry.ticket = ticket
            stream.step()
            running = [*active, *admitted]
            finished = [(entry.job, entry.ticket.result(), entry.size) for entry in running if entry.ticket.done]
            return stream, [entry for entry in running if not entry.ticket.done], finished
        except Exception as exc:
            logger.error("continuous batching failed (%s); rerunning its prompts", type(exc).__name__, exc_info=exc)
            running = [*active, *admitted]
            outcomes = self._isolated([entry.job.prompt for entry in running])
            fresh = self._new_stream() if self._new_stream is not None else None
            return (
                fresh or stream,
                [],
                [(entry.job, outcome, 1) for entry, outcome in zip(running, outcomes, strict=True)],
            )

    async def _collect(self, idle: bool = True) -> list[_Job]:
        # Prompts queued while the last batch ran have waited long enough: they form the batch now.
        # Only an idle worker waits (up to max_wait) for company for the first prompt; a worker with
        # prompts in flight takes what is queued and goes on.
        busy = not self._queue.empty()
        if not idle and self._few_to_join():
            return []
        jobs = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + (0.0 if busy else self.max_wait_s)
        try:
            while len(jobs) < self.max_batch_size:
                if not self._queue.empty():
                    jobs.append(self._queue.get_nowait())
                    continue
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        jobs.append(await self._queue.get())
                except TimeoutError:
                    break
        except asyncio.CancelledError:  # shutdown while waiting for company: answer those collected
            _fail(jobs, RuntimeError("the server is shutting down"))
            raise
        return jobs

    def _isolated(self, prompts: list[str]) -> list[Outcome]:
        """Runs in the worker thread. If the batch fails, each prompt is retried alone, so that one
        prompt that breaks the backend fails only its own request, not its batch-mates'."""
        try:
            return list(self._extract(prompts))
        except Exception as exc:
            if len(prompts) == 1:
                logger.error("extractor failed: %s", type(exc).__name__, exc_info=exc)
                return [exc]
        return [self._isolated([prompt])[0] for prompt in prompts]


def _fail(jobs: Sequence[_Job], exc: Exception) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


# --------------------------------------------------------------------------- API models


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"prompt": "swap 100 USDC for ETH"}]})

    prompt: StrictStr = Field(description="one wallet request in plain language")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[StrictStr] = Field(min_length=1, description="requests, answered in this order")


class ExtractResponse(BaseModel):
    prompt: str
    intents: list[Intent] = Field(description="in execution order; [] when no wallet action is asked for")
    missing: list[list[str]] = Field(description="per intent: required fields the request does not state")
    warnings: list[str]
    error: str | None = Field(None, description="present when nothing may be acted upon: intents is then []")


class BrianRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Brian clients may send fields of their own

    prompt: StrictStr


class BrianResult(BaseModel):
    prompt: str
    completion: list[Intent]


class BrianResponse(BaseModel):
    result: BrianResult


class ModelInfo(BaseModel):
    base: str
    adapter: str | None
    source: str


class Limits(BaseModel):
    max_prompt_chars: int
    max_prompts_per_request: int
    max_batch_size: int
    max_wait_ms: float
    continuous_batching: bool  # in effect: configured, and the model can


class Info(BaseModel):
    model: ModelInfo
    version: str
    schema_version: str
    limits: Limits
    auth: bool


class Health(BaseModel):
    status: str


class ErrorBody(BaseModel):
    error: str
    detail: list[dict[str, Any]] | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 413, 422, 500, 503)
}  # documented in OpenAPI instead of FastAPI's default 422 body

# --------------------------------------------------------------------------- the app


def create_app(extractor: Extractor, settings: ServeConfig) -> FastAPI:
    """The API for `extractor`. The worker starts and stops with the app (ASGI lifespan)."""
    batcher = MicroBatcher(
        extractor.extract_batch,
        settings.max_batch_size,
        settings.max_wait_ms,
        settings.max_queued_prompts,
        stream=(lambda: extractor.stream(settings.max_batch_size)) if settings.continuous_batching else None,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="brianft",
        version=__version__,
        summary="Wallet requests in plain language -> validated intents.",
        lifespan=lifespan,
    )
    app.state.extractor = extractor
    app.state.batcher = batcher
    app.state.settings = settings
    guarded = [Depends(_api_key_check(settings.api_key))] if settings.api_key is not None else []
    v1 = APIRouter(prefix="/v1", dependencies=guarded, responses=_ERRORS)
    brian = APIRouter(prefix="/api/v0/agent", dependencies=guarded, responses=_ERRORS)

    @v1.post("/extract", response_model=ExtractResponse, response_model_exclude_none=True)
    async def extract(body: ExtractRequest, request: Request) -> dict[str, Any]:
        """The intents of one request."""
        (result,) = await _extract(request, [body.prompt], refuse=True)
        return result.to_dict()

    @v1.post("/extract/batch", response_model=list[ExtractResponse], response_model_exclude_none=True)
    async def extract_batch(body: BatchRequest, request: Request) -> list[dict[str, Any]]:
        """The intents of several requests, in order; a refused prompt is an item with "error"."""
        limit = settings.max_prompts_per_request
        if len(body.prompts) > limit:
            raise HTTPException(413, f"{len(body.prompts)} prompts in one request; the limit is {limit}")
        return [result.to_dict() for result in await _extract(request, body.prompts, refuse=False)]

    @brian.post("/parameters-extraction", response_model=BrianResponse, response_model_exclude_none=True)
    async def parameters_extraction(body: BrianRequest, request: Request) -> dict[str, Any]:
        """Brian's parameters-extraction API: the same intents as `completion`."""
        (result,) = await _extract(request, [body.prompt], refuse=True)
        if result.error is not None:
            raise HTTPException(500, result.error)  # no error field in this view: [] would read as "no action"
        return {"result": {"prompt": result.to_dict()["prompt"], "completion": result.intents}}

    @v1.get("/info", response_model=Info)
    async def info() -> dict[str, Any]:
        """The model served, versions and limits."""
        return {
            "model": {"base": extractor.base_model, "adapter": extractor.adapter, "source": extractor.source},
            "version": __version__,
            "schema_version": SCHEMA_VERSION,
            "limits": {
                "max_prompt_chars": extractor.max_prompt_chars,
                "max_prompts_per_request": settings.max_prompts_per_request,
                "max_batch_size": settings.max_batch_size,
                "max_wait_ms": settings.max_wait_ms,
                "continuous_batching": batcher.continuous,
            },
            "auth": settings.api_key is not None,
        }

    @app.get("/health", response_model=Health, responses={503: {"model": ErrorBody}})
    async def health() -> dict[str, str]:
        """Liveness: 200 while the extraction worker runs."""
        if not batcher.running:
            raise HTTPException(503, "the extraction worker is not running")
        return {"status": "ok"}

    app.include_router(v1)
    app.include_router(brian)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes(extractor.max_prompt_chars, settings))
    app.add_middleware(RequestLog, log_prompts=settings.log_prompts)  # outermost: logs CORS preflights too
    return app


async def _extract(request: Request, prompts: list[str], *, refuse: bool) -> list[ExtractionResult]:
    """Results of `prompts` through the micro-batcher; `refuse`: a prompt the extractor refuses is a 422."""
    extractor: Extractor = request.app.state.extractor
    note = _log_note(request)
    note.update(prompts=len(prompts), prompt_chars=sum(map(len, prompts)), texts=prompts)
    if refuse and (problem := next(filter(None, map(extractor.refusal, prompts)), None)):
        raise HTTPException(422, problem)
    try:
        outcomes = await request.app.state.batcher.submit(prompts)
    except Overloaded as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
    note["batch_size"] = max(size for _, size in outcomes)
    if failed := [outcome for outcome, _ in outcomes if isinstance(outcome, Exception)]:
        raise HTTPException(500, f"internal error: the extractor failed ({type(failed[0]).__name__}); see the log")
    return [outcome for outcome, _ in outcomes]  # type: ignore[misc]


# --------------------------------------------------------------------------- errors


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body, readable: one sentence, then the details without the (possibly large) input."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        message = "the request body is not valid JSON"
    elif any(tuple(error["loc"]) == ("body",) and error.get("type") == "missing" for error in errors):
        message = "the request body is missing: send a JSON object"
    elif any(tuple(error["loc"]) == ("body",) for error in errors):
        message = "the request body must be a JSON object (Content-Type: application/json)"
    else:
        message = "invalid request: " + "; ".join(f"{_where(error['loc'])}: {error['msg']}" for error in errors)
    detail = [{key: error[key] for key in ("type", "loc", "msg") if key in error} for error in errors]
    return JSONResponse({"error": message, "detail": jsonable_encoder(detail)}, status_code=422)


def _where(loc: Sequence[Any]) -> str:
    path = [str(part) for part in loc[1:]] if loc and loc[0] == "body" else [str(part) for part in loc]
    return ".".join(path) or "body"


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return JSONResponse({"error": "internal server error; see the log"}, status_code=500)


# --------------------------------------------------------------------------- API key


def _api_key_check(key: SecretStr) -> Callable[..., Any]:
    expected = key.get_secret_value().encode("utf-8")
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <key>")

    async def check(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        api_key: str | None = Security(header),
    ) -> None:
        given = [value for value in (credentials and credentials.credentials, api_key) if value]
        # compare_digest: the time taken does not tell how much of a guess was right.
        if not any(hmac.compare_digest(value.encode("utf-8"), expected) for value in given):
            raise HTTPException(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def resolve_api_key(settings: ServeConfig, environ: Mapping[str, str]) -> ServeConfig:
    """`settings` with the API key read from `settings.api_key_env` when no key is configured
    (a configured key wins); the caller passes the environment, so nothing is read behind its back."""
    if settings.api_key is not None or not settings.api_key_env or not environ.get(settings.api_key_env):
        return settings
    resolved = settings.model_copy()
    try:
        resolved.api_key = environ[settings.api_key_env]  # type: ignore[assignment]  # validated to SecretStr
    except ValidationError:
        raise ConfigError(f"the API key in ${settings.api_key_env} must be at least 8 characters") from None
    return resolved


# --------------------------------------------------------------------------- body size


def max_body_bytes(max_prompt_chars: int, settings: ServeConfig) -> int:
    """The largest body a valid request can need: every prompt at the limit, each character
    JSON-escaped at its longest (12 bytes: a surrogate pair as two \\uXXXX), plus some room."""
    return settings.max_prompts_per_request * (12 * max_prompt_chars + 16) + 4096


class BodyLimit:
    """Pure ASGI middleware: 413 for a body larger than any valid request, checked on Content-Length
    and while a chunked body streams in, so that a huge upload is never read into memory."""

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = HTTPException(413, f"the request body is larger than {self.max_bytes} bytes")
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"error": too_large.detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large  # FastAPI passes an HTTPException from body reading through as it is
            return message

        await self.app(scope, limited, send)


# --------------------------------------------------------------------------- request logs

_LOG_NOTE = "brianft_log"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _log_note(request: Request) -> dict[str, Any]:
    """The dict the request's log line is built from (filled by the middleware and the endpoint)."""
    return request.scope.setdefault("state", {}).setdefault(_LOG_NOTE, {})


class RequestLog:
    """Pure ASGI middleware: one JSON log line per request, and an X-Request-ID on every answer
    (the client's, when it sends a sane one). Prompt text is left out unless `log_prompts`."""

    def __init__(self, app: Any, *, log_prompts: bool = False) -> None:
        self.app = app
        self.log_prompts = log_prompts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        note: dict[str, Any] = scope.setdefault("state", {}).setdefault(_LOG_NOTE, {})
        status = 500  # what the client gets if the app raises before answering

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            texts = note.pop("texts", None)
            record = {
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                **note,
            }
            if self.log_prompts and texts is not None:
                record["prompt_texts"] = texts
            logger.info(json.dumps(record))  # ASCII: lone surrogates cannot break the log stream


# --------------------------------------------------------------------------- running


def run_server(extractor: Extractor, settings: ServeConfig, *, log_level: str = "info") -> None:
    """Serve `extractor` with uvicorn until interrupted (Ctrl-C: graceful shutdown)."""
    import uvicorn

    if not logger.handlers:  # JSON lines on stderr, whatever the root logger does
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    app = create_app(extractor, settings)
    # access_log off: RequestLog writes the one line per request.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False)


@contextmanager
def serve_in_thread(extractor: Extractor, settings: ServeConfig, *, timeout_s: float = 30.0) -> Iterator[str]:
    """The server in a background thread until the block ends (tests, benchmarks); yields its base URL.
    Port 0 picks a free port; the socket is bound here and handed to uvicorn, so no other process can take it."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.bind((settings.host, settings.port))
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(extractor, settings), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="brianft-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.01)
        yield f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("the server did not shut down")
