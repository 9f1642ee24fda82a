"""`brianft serve`: the real server (uvicorn on loopback, in a thread) and a real HTTP client."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from typer.testing import CliRunner

from brianft import __version__
from brianft.config import ConfigError, ServeConfig, load_config
from brianft.extract import Extractor
from brianft.schema import SCHEMA_VERSION
from brianft.serve import JOIN_AFTER_PASSES, MicroBatcher, max_body_bytes, resolve_api_key, serve_in_thread

KEY = "test-key-0123456789"
SWAP = {"action": "swap", "token1": "USDC", "token2": "ETH", "amount": "100", "chain": "base"}


@contextmanager
def serving(extractor: Extractor, **settings) -> Iterator[httpx.Client]:
    """The app on a free loopback port, served by uvicorn in a thread until the block ends."""
    with (
        serve_in_thread(extractor, ServeConfig(port=0, **settings)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


class Recording:
    """A backend wrapper that records the requests of every call; raises on prompts containing 'boom'."""

    def __init__(self, backend, delay: float = 0.0) -> None:
        self.backend = backend
        self.delay = delay  # makes a call last long enough for others to queue up behind it
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, requests: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
        with self.lock:
            self.calls.append(list(requests))
        if any("boom" in request for request in requests):
            raise RuntimeError("backend exploded")
        time.sleep(self.delay)
        return self.backend(requests, batch_size, max_new_tokens)


@pytest.fixture(scope="module")
def rules() -> Extractor:
    return Extractor.rules()


def recording(rules: Extractor, delay: float = 0.0) -> tuple[Extractor, Recording]:
    backend = Recording(rules.backend, delay)
    return Extractor(backend, rules.canonicalizer, source="recording", base_model="rules"), backend


@pytest.fixture(scope="module")
def client(rules) -> Iterator[httpx.Client]:
    with serving(rules) as client:
        yield client


# --------------------------------------------------------------------------- the contract


def test_extract_returns_the_validated_intents(client):
    response = client.post("/v1/extract", json={"prompt": "swap 100 USDC for ETH on base"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "prompt": "swap 100 USDC for ETH on base",
        "intents": [SWAP],
        "missing": [[]],
        "warnings": [],
    }
    assert response.headers["content-type"] == "application/json"
    assert len(response.headers["x-request-id"]) == 32


def test_extract_reports_missing_fields_and_no_action(client):
    body = client.post("/v1/extract", json={"prompt": "send 5 dai"}).json()
    assert body["intents"] == [{"action": "transfer", "token1": "DAI", "amount": "5"}]
    assert body["missing"] == [["address"]]
    small_talk = client.post("/v1/extract", json={"prompt": "how do I make an omelette?"}).json()
    assert small_talk["intents"] == [] and small_talk["missing"] == [] and "error" not in small_talk


def test_batch_answers_in_order_and_refused_prompts_are_error_items(client):
    prompts = ["swap 100 USDC for ETH on base", "   ", "wrap 2 eth", "x" * 1001]
    response = client.post("/v1/extract/batch", json={"prompts": prompts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["prompt"] for item in body] == prompts
    assert body[0]["intents"] == [SWAP] and "error" not in body[0]
    assert body[1]["error"] == "the request is empty" and body[1]["intents"] == []
    assert body[2]["intents"] == [{"action": "wrap", "token1": "ETH", "amount": "2"}]
    assert "1001 characters" in body[3]["error"] and body[3]["intents"] == []


def test_brian_compatible_endpoint(client):
    response = client.post(
        "/api/v0/agent/parameters-extraction", json={"prompt": "send 5 dai to Bob.eth", "chainId": "8453"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "result": {
            "prompt": "send 5 dai to Bob.eth",
            "completion": [{"action": "transfer", "token1": "DAI", "amount": "5", "address": "bob.eth"}],
        }
    }
    refused = client.post("/api/v0/agent/parameters-extraction", json={"prompt": ""})
    assert refused.status_code == 422 and refused.json()["error"] == "the request is empty"


def test_health_info_and_openapi(client, rules):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/v1/info").json()
    assert info == {
        "model": {"base": "rules", "adapter": None, "source": "rules"},
        "version": __version__,
        "schema_version": SCHEMA_VERSION,
        "limits": {
            "max_prompt_chars": rules.max_prompt_chars,
            "max_prompts_per_request": 64,
            "max_batch_size": 16,
            "max_wait_ms": 10.0,
            "continuous_batching": False,  # the rules have no model passes to join
        },
        "auth": False,
    }
    schema = client.get("/openapi.json").json()
    assert {"/v1/extract", "/v1/extract/batch", "/api/v0/agent/parameters-extraction", "/health", "/v1/info"} <= set(
        schema["paths"]
    )
    assert {"ExtractRequest", "ExtractResponse", "Intent", "BrianResponse", "ErrorBody"} <= set(
        schema["components"]["schemas"]
    )
    assert "swap" in schema["components"]["schemas"]["Action"]["enum"]
    assert client.get("/docs").status_code == 200


# --------------------------------------------------------------------------- bad input

BAD = [
    ("/v1/extract", {"json": {"prompt": ""}}, 422, "the request is empty"),
    ("/v1/extract", {"json": {"prompt": " \n\t"}}, 422, "the request is empty"),
    ("/v1/extract", {"json": {"prompt": "x" * 1001}}, 422, "1001 characters long; the limit is 1000"),
    ("/v1/extract", {"content": b'{"prompt": "send \\ud800 eth"}'}, 422, "lone surrogate"),
    ("/v1/extract", {"json": {"prompt": 42}}, 422, "prompt: Input should be a valid string"),
    ("/v1/extract", {"json": {"prompt": ["wrap 1 eth"]}}, 422, "prompt: Input should be a valid string"),
    ("/v1/extract", {"json": {}}, 422, "prompt: Field required"),
    ("/v1/extract", {"json": {"prompt": "wrap 1 eth", "model": "gpt"}}, 422, "model: Extra inputs are not permitted"),
    ("/v1/extract", {"content": b'{"prompt": "wrap 1 eth"'}, 422, "not valid JSON"),
    ("/v1/extract", {"content": b'"wrap 1 eth"'}, 422, "must be a JSON object"),
    ("/v1/extract", {"content": b""}, 422, "the request body is missing"),
    ("/v1/extract/batch", {"json": {"prompts": []}}, 422, "prompts: List should have at least 1 item"),
    ("/v1/extract/batch", {"json": {"prompts": "wrap 1 eth"}}, 422, "prompts: Input should be a valid list"),
    ("/v1/extract/batch", {"json": {"prompts": ["wrap 1 eth", 3]}}, 422, "prompts.1: Input should be a valid string"),
    (
        "/v1/extract/batch",
        {"json": {"prompts": ["wrap 1 eth"] * 65}},
        413,
        "65 prompts in one request; the limit is 64",
    ),
    ("/api/v0/agent/parameters-extraction", {"json": {"prompt": None}}, 422, "prompt: Input should be a valid string"),
]


@pytest.mark.parametrize(("path", "request_kwargs", "status", "message"), BAD)
def test_bad_input_is_a_clear_4xx(client, path, request_kwargs, status, message):
    headers = {"content-type": "application/json"}
    response = client.post(path, headers=headers, **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in body["error"], body
    if "detail" in body:  # FastAPI's validation details, without echoing the input back
        assert body["detail"] and all({"type", "loc", "msg"} == set(item) for item in body["detail"])


def test_a_body_larger_than_any_valid_request_is_refused_unread(client, rules):
    limit = max_body_bytes(rules.max_prompt_chars, ServeConfig())
    big = json.dumps({"prompts": ["x" * 1000] * 64 * 13}).encode()
    assert len(big) > limit
    announced = client.post("/v1/extract/batch", content=big, headers={"content-type": "application/json"})
    assert announced.status_code == 413 and f"larger than {limit} bytes" in announced.json()["error"]
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no Content-Length: chunked
    streamed = client.post("/v1/extract/batch", content=chunks, headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and f"larger than {limit} bytes" in streamed.json()["error"]
    # the largest valid request still fits: 64 prompts at the limit, each character escaped
    emoji = "\U0001f680" * rules.max_prompt_chars
    largest = json.dumps({"prompts": [emoji] * 64}).encode()
    fits = client.post("/v1/extract/batch", content=largest, headers={"content-type": "application/json"})
    assert fits.status_code == 200 and len(fits.json()) == 64


def test_wrong_method_and_unknown_path_are_json_errors(client):
    assert client.get("/v1/extract").status_code == 405
    assert client.get("/v1/extract").json() == {"error": "Method Not Allowed"}
    assert client.get("/v2/nothing").json() == {"error": "Not Found"}


def test_unreadable_model_output_is_an_error_result(rules):
    extractor = Extractor(lambda requests, *_: ["teleport; token1=eth"] * len(requests), rules.canonicalizer)
    with serving(extractor) as client:
        response = client.post("/v1/extract", json={"prompt": "swap 1 eth for usdc"})
        assert response.status_code == 200
        body = response.json()
        assert body["intents"] == [] and body["error"].startswith("malformed model output: ")
        assert "teleport" in body["error"]
        # the Brian view has no error field: an empty completion would read as "no action"
        brian = client.post("/api/v0/agent/parameters-extraction", json={"prompt": "swap 1 eth for usdc"})
        assert brian.status_code == 500 and brian.json()["error"].startswith("malformed model output")


def test_backend_failure_is_a_500_and_the_server_keeps_serving(rules, caplog):
    extractor, backend = recording(rules)
    caplog.set_level(logging.INFO, logger="brianft.serve")
    with serving(extractor) as client:
        failed = client.post("/v1/extract", json={"prompt": "boom 1 eth"})
        assert failed.status_code == 500
        assert failed.json() == {"error": "internal error: the extractor failed (RuntimeError); see the log"}
        assert client.post("/v1/extract/batch", json={"prompts": ["wrap 1 eth", "boom"]}).status_code == 500
        after = client.post("/v1/extract", json={"prompt": "wrap 3 eth"})
        assert after.status_code == 200 and after.json()["intents"][0]["amount"] == "3"
        assert client.get("/health").status_code == 200
    assert "backend exploded" in caplog.text  # the traceback is in the log, not in the answer
    assert backend.calls[-1] == ["wrap 3 eth"]


def test_a_failing_prompt_does_not_fail_its_batch_mates(rules):
    extractor, backend = recording(rules)
    # A long wait makes the two concurrent requests share one micro-batch.
    with serving(extractor, max_wait_ms=500) as client, ThreadPoolExecutor(2) as pool:
        bad = pool.submit(client.post, "/v1/extract", json={"prompt": "boom 2 eth"})
        good = pool.submit(client.post, "/v1/extract", json={"prompt": "wrap 2 eth"})
        assert bad.result().status_code == 500
        assert good.result().status_code == 200
        assert good.result().json()["intents"] == [{"action": "wrap", "token1": "ETH", "amount": "2"}]
    assert sorted(backend.calls[0]) == ["boom 2 eth", "wrap 2 eth"]  # failed together, then retried alone


# --------------------------------------------------------------------------- concurrency


def _address(i: int) -> str:
    return f"0x{i:040x}"


def test_concurrent_clients_each_get_their_own_answer_and_requests_are_batched(rules):
    extractor, backend = recording(rules, delay=0.02)
    clients = 40
    with serving(extractor, max_batch_size=8, max_wait_ms=20) as client, ThreadPoolExecutor(clients) as pool:
        barrier = threading.Barrier(clients)

        def ask(i: int) -> tuple[int, httpx.Response]:
            barrier.wait()
            if i % 10 == 9:  # some batch requests go through the same queue
                return i, client.post("/v1/extract/batch", json={"prompts": [f"wrap {i} eth", f"unwrap {i + 1} weth"]})
            return i, client.post("/v1/extract", json={"prompt": f"send {i + 1}.5 usdc to {_address(i)}"})

        answers = list(pool.map(ask, range(clients)))
    for i, response in answers:
        assert response.status_code == 200, response.text
        if i % 10 == 9:
            wrap, unwrap = response.json()
            assert wrap["intents"] == [{"action": "wrap", "token1": "ETH", "amount": str(i)}]
            assert unwrap["intents"][0]["action"] == "unwrap" and unwrap["intents"][0]["amount"] == str(i + 1)
        else:
            assert response.json()["intents"] == [
                {"action": "transfer", "token1": "USDC", "amount": f"{i + 1}.5", "address": _address(i)}
            ]
    sizes = [len(call) for call in backend.calls]
    assert sum(sizes) == 36 + 4 * 2  # every prompt extracted exactly once
    assert max(sizes) > 1, sizes  # micro-batching grouped concurrent requests
    assert max(sizes) <= 8, sizes


def test_batch_size_one_turns_batching_off(rules):
    extractor, backend = recording(rules)
    with serving(extractor, max_batch_size=1, max_wait_ms=50) as client:
        response = client.post("/v1/extract/batch", json={"prompts": ["wrap 1 eth", "wrap 2 eth", "wrap 3 eth"]})
        assert [item["intents"][0]["amount"] for item in response.json()] == ["1", "2", "3"]
    assert backend.calls == [["wrap 1 eth"], ["wrap 2 eth"], ["wrap 3 eth"]]


def test_prompts_queued_during_a_batch_run_next_without_waiting():
    """An idle worker waits for company (here: up to 10 s); prompts that queued while a batch ran do not."""
    release = threading.Event()
    calls: list[list[str]] = []

    def extract(prompts: list[str]) -> list[str]:
        calls.append(prompts)
        release.wait(10)
        return [p.upper() for p in prompts]

    async def scenario() -> list:
        batcher = MicroBatcher(extract, max_batch_size=2, max_wait_ms=10_000)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(["a", "b"]))  # fills a batch: no wait
        while not calls:
            await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(batcher.submit([p])) for p in "cde"]  # queue while a, b run
        await asyncio.sleep(0.05)
        release.set()
        started = time.monotonic()
        answers = await asyncio.gather(first, *rest)
        elapsed = time.monotonic() - started
        await batcher.stop()
        return [answers, elapsed]

    answers, elapsed = asyncio.run(scenario())
    assert calls == [["a", "b"], ["c", "d"], ["e"]]
    assert answers == [[("A", 2), ("B", 2)], [("C", 2)], [("D", 2)], [("E", 1)]]
    assert elapsed < 5  # "e" did not wait max_wait_ms for company


class FakeTicket:
    def __init__(self, prompt: str) -> None:
        self.prompt, self.passes_left = prompt, int(prompt.split(":")[1])  # "name:N" needs N passes

    @property
    def done(self) -> bool:
        return self.passes_left <= 0

    def result(self) -> str:
        return self.prompt.upper()


class FakeStream:
    """Stands in for `Extractor.stream()`: a prompt "x:N" is done after N passes (its first is `add`'s)."""

    def __init__(self, log: list) -> None:
        self.log, self.tickets = log, []

    @property
    def busy(self) -> bool:
        return any(not t.done for t in self.tickets)

    def add(self, prompts: list[str]) -> list[FakeTicket]:
        if any("boom" in p for p in prompts):
            raise RuntimeError("stream exploded")
        self.log.append(("add", list(prompts)))
        new = [FakeTicket(p) for p in prompts]
        for ticket in new:
            ticket.passes_left -= 1
        self.tickets += new
        return new

    def step(self) -> None:
        time.sleep(0.02)
        self.log.append(("step",))
        for ticket in self.tickets:
            ticket.passes_left -= 1


def continuous(scenario, extract=None):
    log: list = []
    streams: list = []

    def new_stream():
        streams.append(FakeStream(log))
        return streams[-1]

    async def run():
        batcher = MicroBatcher(
            extract or (lambda prompts: [p.upper() for p in prompts]), 4, max_wait_ms=0, stream=new_stream
        )
        batcher.start()
        try:
            return await scenario(batcher, log)
        finally:
            await batcher.stop()

    return asyncio.run(run()), log, streams


def test_continuous_batching_answers_each_prompt_when_it_is_done():
    """A prompt whose first pass finishes it is answered before its slow batch-mate, and prompts
    that arrive meanwhile join the running batch instead of waiting for it to end."""

    async def scenario(batcher, _log):
        order: list[str] = []

        async def ask(prompt):
            answer = await batcher.submit([prompt])
            order.append(prompt)
            return answer

        slow = asyncio.ensure_future(ask("slow:30"))
        fast = asyncio.ensure_future(ask("fast:1"))
        await asyncio.sleep(0.1)  # slow is still decoding
        late = await ask("late:2")
        answers = await asyncio.gather(slow, fast)
        return order, answers, late

    (order, answers, late), log, _ = continuous(scenario)
    assert order == ["fast:1", "late:2", "slow:30"]
    assert answers == [[("SLOW:30", 2)], [("FAST:1", 2)]] and late == [("LATE:2", 1)]
    assert log[0] == ("add", ["slow:30", "fast:1"]) and ("add", ["late:2"]) in log


def test_a_lone_prompt_waits_a_few_passes_for_company_and_a_group_joins_at_once():
    """While prompts decode, one or two new prompts make a poor pass of their own: a lone one
    waits up to JOIN_AFTER_PASSES passes for company; a quarter of max_batch_size joins at once."""

    async def scenario(batcher, log):
        slow = asyncio.ensure_future(batcher.submit(["slow:60"]))
        await asyncio.sleep(0.1)
        marks = {"late": len(log)}
        await batcher.submit(["late:1"])
        marks["pair"] = len(log)
        await batcher.submit(["a:1", "b:1"])
        await slow
        return marks

    def steps_before(add, since):
        index = log.index(("add", add))
        return sum(entry == ("step",) for entry in log[since:index])

    marks, log, _ = continuous(scenario)
    assert JOIN_AFTER_PASSES <= steps_before(["late:1"], marks["late"]) <= JOIN_AFTER_PASSES + 1
    assert steps_before(["a:1", "b:1"], marks["pair"]) <= 1


def test_a_failing_stream_reruns_its_prompts_and_a_new_stream_starts(caplog):
    """If the stream raises, its prompts are rerun through extract_batch (a prompt that breaks the
    extractor fails alone) and later prompts go to a fresh stream."""

    def extract(prompts):
        if any("boom" in p for p in prompts):
            raise RuntimeError("extractor exploded")
        return [p.upper() for p in prompts]

    async def scenario(batcher, _log):
        slow = asyncio.ensure_future(batcher.submit(["slow:20"]))
        await asyncio.sleep(0.05)
        boom = await batcher.submit(["boom:1"])
        after = await batcher.submit(["after:2"])
        return await slow, boom, after

    with caplog.at_level(logging.ERROR, logger="brianft.serve"):
        (slow, boom, after), log, streams = continuous(scenario, extract)
    assert slow == [("SLOW:20", 1)]  # rerun through extract_batch when the stream failed
    assert isinstance(boom[0][0], RuntimeError)
    assert after == [("AFTER:2", 1)]
    assert len(streams) == 2 and streams[1].tickets[0].prompt == "after:2"
    assert "continuous batching failed" in caplog.text


def test_overload_is_a_503_and_the_server_recovers(rules):
    """Beyond max_queued_prompts waiting prompts, requests are shed with 503 + Retry-After
    instead of queueing without bound; once the queue drains, requests succeed again."""
    extractor, _ = recording(rules, delay=0.5)
    with serving(extractor, max_batch_size=1, max_wait_ms=0, max_queued_prompts=2) as client:
        base = str(client.base_url)

        def post(n: int) -> httpx.Response:
            with httpx.Client(base_url=base, timeout=30) as own:
                return own.post("/v1/extract", json={"prompt": f"wrap {n} eth"})

        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(post, range(1, 9)))
        codes = sorted(r.status_code for r in responses)
        assert 503 in codes and 200 in codes, codes
        shed = next(r for r in responses if r.status_code == 503)
        assert shed.headers["Retry-After"] == "1" and "busy" in shed.json()["error"]
        for response in responses:
            if response.status_code == 200:  # every answered client got its own prompt's answer
                assert response.json()["prompt"] == f"wrap {response.json()['intents'][0]['amount']} eth"
        assert client.post("/v1/extract", json={"prompt": "wrap 9 eth"}).status_code == 200
        big = client.post("/v1/extract/batch", json={"prompts": ["wrap 1 eth"] * 3})
        assert big.status_code == 503  # more prompts than the queue may ever hold


# --------------------------------------------------------------------------- API key, CORS, logs


def test_api_key_is_required_when_configured(rules):
    with serving(rules, api_key=KEY) as client:
        prompt = {"prompt": "wrap 1 eth"}
        missing = client.post("/v1/extract", json=prompt)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "X-API-Key" in missing.json()["error"] and KEY not in missing.text
        assert client.post("/v1/extract", json=prompt, headers={"X-API-Key": KEY + "x"}).status_code == 401
        assert client.post("/v1/extract", json=prompt, headers={"Authorization": f"Basic {KEY}"}).status_code == 401
        assert client.post("/v1/extract", json=prompt, headers={"X-API-Key": KEY}).status_code == 200
        assert client.post("/v1/extract", json=prompt, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        brian = "/api/v0/agent/parameters-extraction"
        assert client.post(brian, json=prompt).status_code == 401
        assert client.post(brian, json=prompt, headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/v1/info").status_code == 401
        assert client.get("/v1/info", headers={"X-API-Key": KEY}).json()["auth"] is True
        assert client.get("/health").status_code == 200  # liveness probes carry no key


def test_api_key_off_by_default(client):
    assert (
        client.post("/v1/extract", json={"prompt": "wrap 1 eth"}, headers={"X-API-Key": "anything"}).status_code == 200
    )


def test_resolve_api_key_from_the_environment():
    assert resolve_api_key(ServeConfig(), {}).api_key is None
    from_env = resolve_api_key(ServeConfig(), {"BRIANFT_API_KEY": KEY})
    assert from_env.api_key.get_secret_value() == KEY and KEY not in repr(from_env)
    configured = resolve_api_key(ServeConfig(api_key="configured-key"), {"BRIANFT_API_KEY": KEY})
    assert configured.api_key.get_secret_value() == "configured-key"  # the configuration wins
    assert resolve_api_key(ServeConfig(api_key_env=None), {"BRIANFT_API_KEY": KEY}).api_key is None
    with pytest.raises(ConfigError, match="at least 8"):
        resolve_api_key(ServeConfig(), {"BRIANFT_API_KEY": "short"})


def test_cors_only_when_configured(rules, client):
    origin = "https://wallet.example"
    assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": origin}).headers
    with serving(rules, cors_origins=[origin]) as cors:
        assert cors.get("/health", headers={"Origin": origin}).headers["access-control-allow-origin"] == origin
        preflight = cors.options(
            "/v1/extract",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-api-key",
            },
        )
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin
        other = cors.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def _log_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "brianft.serve" and r.levelno == 20]


def test_request_logs_are_json_lines_without_prompt_text(rules, caplog):
    caplog.set_level(logging.INFO, logger="brianft.serve")
    prompt = "send 5 dai to secretfriend.eth"
    with serving(rules, api_key=KEY) as client:
        response = client.post("/v1/extract", json={"prompt": prompt}, headers={"X-API-Key": KEY})
        client.post("/v1/extract/batch", json={"prompts": [prompt, "wrap 1 eth"]}, headers={"X-API-Key": KEY})
        client.post("/v1/extract", json={"prompt": ""}, headers={"X-API-Key": KEY, "X-Request-ID": "client-id-7"})
    assert "secretfriend" not in caplog.text and KEY not in caplog.text
    single, batch, refused = [line for line in _log_lines(caplog) if line["path"].startswith("/v1/extract")]
    assert single["request_id"] == response.headers["x-request-id"]
    assert single["method"] == "POST" and single["status"] == 200 and single["latency_ms"] > 0
    assert (single["prompts"], single["prompt_chars"], single["batch_size"]) == (1, len(prompt), 1)
    assert (batch["prompts"], batch["prompt_chars"], batch["batch_size"]) == (2, len(prompt) + 10, 2)
    assert refused["status"] == 422 and refused["request_id"] == "client-id-7"


def test_request_logs_carry_prompts_when_asked(rules, caplog):
    caplog.set_level(logging.INFO, logger="brianft.serve")
    with serving(rules, log_prompts=True) as client:
        client.post("/v1/extract", json={"prompt": "send 5 dai to secretfriend.eth"})
    (line,) = [line for line in _log_lines(caplog) if line["path"] == "/v1/extract"]
    assert line["prompt_texts"] == ["send 5 dai to secretfriend.eth"]


# --------------------------------------------------------------------------- config, CLI, a real model


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("serve.port=70000", "serve.port"),
        ("serve.max_batch_size=0", "serve.max_batch_size"),
        ("serve.max_wait_ms=-1", "serve.max_wait_ms"),
        ("serve.max_prompts_per_request=0", "serve.max_prompts_per_request"),
        ("serve.api_key=short", "serve.api_key"),
        ("serve.cors_origins=3", "serve.cors_origins"),
        ("serve.workers=4", "serve.workers"),
    ],
)
def test_bad_serve_config_is_a_config_error(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_serve_config_from_yaml(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("serve:\n  port: 9000\n  cors_origins: [https://a.example]\n  api_key: a-long-enough-key\n")
    serve = load_config(path).serve
    assert (serve.host, serve.port, serve.cors_origins) == ("127.0.0.1", 9000, ["https://a.example"])
    assert serve.api_key.get_secret_value() == "a-long-enough-key" and "a-long-enough-key" not in repr(serve)


def test_cli_serve_without_a_run_is_a_clear_error(tmp_path, monkeypatch):
    from brianft.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "make run" in result.output and "--model rules" in result.output and "Traceback" not in result.output


def test_cli_serve_passes_options_and_env_key(monkeypatch):
    import brianft.serve
    from brianft.cli import app

    served = {}
    monkeypatch.setattr(brianft.serve, "run_server", lambda extractor, settings: served.update(e=extractor, s=settings))
    monkeypatch.setenv("BRIANFT_API_KEY", KEY)
    args = ["serve", "-m", "rules", "--host", "0.0.0.0", "--port", "9001", "--set", "data.max_prompt_chars=50"]
    result = CliRunner().invoke(app, [*args, "--set", "serve.max_batch_size=4"])
    assert result.exit_code == 0, result.output
    assert (served["s"].host, served["s"].port, served["s"].max_batch_size) == ("0.0.0.0", 9001, 4)
    assert served["s"].api_key.get_secret_value() == KEY
    assert served["e"].source == "rules" and served["e"].max_prompt_chars == 50 and served["e"].batch_size == 4


def test_serving_a_tiny_trained_run(tiny_run_dir, tiny_llama_dir):
    extractor = Extractor.from_run(tiny_run_dir)
    with serving(extractor, max_batch_size=4) as client:
        info = client.get("/v1/info").json()
        assert info["model"]["base"] == str(tiny_llama_dir)
        assert info["model"]["adapter"] == str(tiny_run_dir / "adapter")
        assert info["limits"]["continuous_batching"] is True
        one = client.post("/v1/extract", json={"prompt": "swap 1 eth for usdc"})
        assert one.status_code == 200, one.text  # a 2-step model emits nonsense: only the shape is checked
        assert one.json()["prompt"] == "swap 1 eth for usdc"
        assert {"prompt", "intents", "missing", "warnings"} <= set(one.json()) <= {*one.json(), "error"}
        batch = client.post("/v1/extract/batch", json={"prompts": ["wrap 1 eth", "bridge 5 usdc to base"]})
        assert [item["prompt"] for item in batch.json()] == ["wrap 1 eth", "bridge 5 usdc to base"]
        # continuous batching (on by default): concurrent clients get what one extract_batch gives
        prompts = ["wrap 1 eth", "bridge 5 usdc to base", "send 5 dai to bob.eth", "stake 2 eth", "bal?", ""]
        expected = [result.to_dict() for result in extractor.extract_batch(prompts)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda p: client.post("/v1/extract/batch", json={"prompts": [p]}).json(), prompts))
        assert [answer[0] for answer in answers] == expected
        brian = client.post("/api/v0/agent/parameters-extraction", json={"prompt": "wrap 1 eth"})
        assert brian.status_code in (200, 500)  # 500 when its output cannot be read
        assert set(brian.json()) == ({"result"} if brian.status_code == 200 else {"error"})
