"""The safe extraction API: refusals, malformed output, grounding, and a tiny trained run."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brianft.extract import ExtractionResult, Extractor

GOOD_ADDRESS = "0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045"
BAD_CHECKSUM = "0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96046"
KEYS = {"prompt", "intents", "missing", "warnings"}


class FakeBackend:
    """Answers every request with a fixed output and records what it was asked."""

    def __init__(self, output="none"):
        self.output = output
        self.calls = []

    def __call__(self, requests, batch_size, max_new_tokens):
        self.calls.append(list(requests))
        return [self.output(r) if callable(self.output) else self.output for r in requests]


@pytest.fixture(scope="module")
def canonicalizer():
    from brianft.normalize import Canonicalizer

    return Canonicalizer.default()


def fake(canonicalizer, output="none", **kwargs):
    backend = FakeBackend(output)
    return Extractor(backend, canonicalizer, **kwargs), backend


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        (None, "must be text"),
        (42, "must be text"),
        (b"swap 1 eth", "must be text"),
        ("x" * 1001, "1001 characters"),
        ("send \ud800 eth", "not valid Unicode"),
    ],
)
def test_bad_requests_are_refused_without_a_model_call(canonicalizer, text, message):
    extractor, backend = fake(canonicalizer, "swap; token1=eth; token2=usdc; amount=1")
    result = extractor.extract(text)
    assert result.error is not None and message in result.error
    assert result.intents == [] and result.missing == []
    assert backend.calls == []
    assert set(result.to_dict()) == KEYS | {"error"}


def test_limit_is_configurable_and_inclusive(canonicalizer):
    extractor, backend = fake(canonicalizer, max_prompt_chars=20)
    assert extractor.extract("x" * 20).error is None
    assert "limit is 20" in extractor.extract("x" * 21).error
    assert backend.calls == [["x" * 20]]


@pytest.mark.parametrize(
    "output",
    ["swap 1 eth please", "launch; token1=eth", '{"completion": 5}', "", "transfer; token1=eth; amount=1; oops"],
)
def test_malformed_output_is_an_error_with_no_intents(canonicalizer, output):
    extractor, _ = fake(canonicalizer, output)
    result = extractor.extract("swap 1 eth for usdc")
    assert result.error is not None and result.error.startswith("malformed model output: ")
    assert len(result.error) > len("malformed model output: ")
    assert result.intents == [] and result.missing == []
    assert "error" in result.to_dict()


def test_no_intent_is_not_an_error(canonicalizer):
    extractor, _ = fake(canonicalizer, "none")
    result = extractor.extract("how do I make an omelette?")
    assert result.error is None and result.intents == [] and result.to_dict().keys() == KEYS


def test_batch_keeps_order_and_skips_refused(canonicalizer):
    extractor, backend = fake(canonicalizer, lambda r: f"transfer; token1=eth; amount={r.split()[1]}; address=bob.eth")
    texts = ["send 1 eth to bob.eth", "", "send 2 eth to bob.eth", 7, "send 3 eth to bob.eth"]
    results = extractor.extract_batch(texts)
    assert [r.prompt for r in results] == texts
    assert [r.intents[0]["amount"] if r.intents else None for r in results] == ["1", None, "2", None, "3"]
    assert [r.error is None for r in results] == [True, False, True, False, True]
    assert backend.calls == [["send 1 eth to bob.eth", "send 2 eth to bob.eth", "send 3 eth to bob.eth"]]
    assert extractor.extract_batch([]) == []


# --------------------------------------------------------------------------- grounding


def test_invented_address_is_dropped_and_then_missing(canonicalizer):
    extractor, _ = fake(canonicalizer, "transfer; token1=eth; amount=1; address=alice.eth")
    result = extractor.extract("send 1 eth to bob.eth")
    assert result.error is None
    assert result.intents == [{"action": "transfer", "token1": "ETH", "amount": "1"}]
    assert result.missing == [["address"]]
    assert any("alice.eth" in w and "dropped" in w for w in result.warnings)


def test_invented_hex_address_is_dropped(canonicalizer):
    other = "0x" + "1" * 40
    extractor, _ = fake(canonicalizer, f"transfer; token1=eth; amount=1; address={other}")
    result = extractor.extract(f"send 1 eth to {GOOD_ADDRESS}")
    assert "address" not in result.intents[0] and result.missing == [["address"]]
    # a prefix of a written address is not the address either
    extractor, _ = fake(canonicalizer, "transfer; token1=eth; amount=1; address=a.eth")
    assert extractor.extract("send 1 eth to aa.eth").missing == [["address"]]


def test_address_written_in_other_case_is_grounded(canonicalizer):
    extractor, _ = fake(canonicalizer, f"transfer; token1=eth; amount=1; address={GOOD_ADDRESS.lower()}")
    result = extractor.extract(f"Send 1 ETH to {GOOD_ADDRESS}.")
    assert result.intents[0]["address"] == GOOD_ADDRESS.lower()
    assert result.missing == [[]] and result.warnings == []
    extractor, _ = fake(canonicalizer, "transfer; token1=eth; amount=1; address=Bob.eth")
    assert extractor.extract("send 1 eth to BOB.ETH!").intents[0]["address"] == "bob.eth"


def test_unsupported_amount_and_token_are_kept_but_flagged(canonicalizer):
    extractor, _ = fake(canonicalizer, "swap; token1=dai; token2=usdc; amount=500; chain=base")
    result = extractor.extract("swap 50 eth for usdc")
    assert result.intents == [{"action": "swap", "token1": "DAI", "token2": "USDC", "amount": "500", "chain": "base"}]
    flagged = " ".join(result.warnings)
    assert "token1 'DAI'" in flagged and "amount '500'" in flagged and "chain 'base'" in flagged
    assert "token2" not in flagged


def test_supported_raw_spans_are_not_flagged(canonicalizer):
    output = "swap; token1=usdc; token2=eth; amount=2.5k; chain=Arbitrum One"
    extractor, _ = fake(canonicalizer, output)
    result = extractor.extract("swap 2.5k USDC for ether on arbitrum one")
    assert result.warnings == [] and result.error is None
    assert result.intents[0]["amount"] == "2500" and result.intents[0]["chain"] == "arbitrum"


def test_checksum_and_unknown_chain_warnings_pass_through(canonicalizer):
    extractor, _ = fake(canonicalizer, f"transfer; token1=eth; amount=1; address={BAD_CHECKSUM}; chain=zorbchain")
    result = extractor.extract(f"send 1 eth to {BAD_CHECKSUM} on zorbchain")
    assert result.intents[0]["address"] == BAD_CHECKSUM  # never silently fixed
    assert any("EIP-55" in w for w in result.warnings)
    assert any("unknown chain" in w for w in result.warnings)


def test_a_request_value_no_intent_uses_is_flagged(canonicalizer):
    extractor, _ = fake(canonicalizer, "transfer; token1=eth; amount=0.1; address=a.eth")
    result = extractor.extract("send 0.1 eth to a.eth and 50 usdc to carol.eth")
    assert result.intents == [{"action": "transfer", "token1": "ETH", "amount": "0.1", "address": "a.eth"}]
    assert result.warnings == [
        "the request names '50', 'carol.eth', which no intent uses; check that no step is missing"
    ]
    # an empty answer moves nothing: no warning, though the question names values
    extractor, _ = fake(canonicalizer, "none")
    assert extractor.extract("should I stake 5 eth on rocket pool or lido?").warnings == []
    # a name inside a longer unused one ("rocket" of "rocket pool") is not listed again
    extractor, _ = fake(canonicalizer, "stake; token1=eth; amount=5; protocol=lido")
    assert extractor.extract("stake 5 eth on lido, or rocket pool?").warnings == [
        "the request names 'rocket pool', which no intent uses; check that no step is missing"
    ]
    # every value used: no warning
    extractor, _ = fake(
        canonicalizer, "transfer; token1=eth; amount=0.1; address=a.eth\ntransfer; token1=usdc; amount=50"
    )
    assert extractor.extract("send 0.1 eth to a.eth and 50 usdc to a.eth").warnings == []


def test_to_dict_shape():
    result = ExtractionResult(prompt="p", intents=[{"action": "wrap", "amount": "1"}], missing=[[]])
    assert result.to_dict() == {
        "prompt": "p",
        "intents": [{"action": "wrap", "amount": "1"}],
        "missing": [[]],
        "warnings": [],
    }
    assert ExtractionResult(prompt="p", error="bad").to_dict()["error"] == "bad"


# --------------------------------------------------------------------------- rules backend


@pytest.fixture(scope="module")
def rules_extractor():
    return Extractor.rules()


def test_rules_extractor(rules_extractor):
    result = rules_extractor.extract("swap 2.5k USDC for eth on Arbitrum One and send it to Bob.eth")
    assert result.error is None
    assert [i["action"] for i in result.intents] == ["swap", "transfer"]
    assert result.missing == [[], ["amount"]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.text(st.characters(min_codepoint=0xD700, max_codepoint=0xE100, exclude_categories=()), max_size=20),
        st.none(),
        st.integers(),
        st.binary(max_size=20),
    )
)
def test_rules_extract_never_raises(rules_extractor, text):
    result = rules_extractor.extract(text)
    assert isinstance(result, ExtractionResult)
    assert (result.error is None) or result.intents == []
    assert len(result.missing) == len(result.intents)
    json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- a real (tiny) run


def test_tiny_run_extracts_in_order(tiny_run_dir):
    run_dir = tiny_run_dir
    extractor = Extractor.from_run(run_dir, batch_size=2, max_new_tokens=32)
    requests = ["swap 1 eth for usdc on base", "", "send 5 dai to bob.eth", "bridge 100 usdt from ethereum to base"]
    results = extractor.extract_batch(requests)
    assert [r.prompt for r in results] == requests
    assert results[1].error == "the request is empty"
    for result in results:
        assert KEYS <= set(result.to_dict()) <= KEYS | {"error"}
        assert len(result.missing) == len(result.intents)
        if result.error is not None:
            assert result.intents == []
    # how the model runs is on record (the server's /v1/info shows it)
    assert "LoRA adapter" in extractor.source and "rule drafts verified" in extractor.source
    assert extractor.source.endswith("output constrained to the request")
    plain = Extractor.from_run(run_dir, dtype="float32", draft=False, constrain=False)
    assert plain.source.endswith("inference: merged float32 weights, no drafts, unconstrained output")
    # constrained: every output is valid, or a warning says decoding gave up on it
    for result in results:
        assert result.error is None or result.prompt == "" or any("unchecked" in w for w in result.warnings)
    # a single extract agrees with the batch (greedy decoding)
    assert extractor.extract(requests[2]).to_dict() == results[2].to_dict()


def test_a_stream_gives_what_extract_batch_gives(tiny_run_dir, rules_extractor):
    """Continuous batching (the server): requests added while others decode get the same results
    as one `extract_batch` call; refused ones are answered at once, without the model."""
    extractor = Extractor.from_run(tiny_run_dir, batch_size=2, max_new_tokens=8)
    requests = ["swap 1 eth for usdc on base", "", "send 5 dai to bob.eth", "bridge 100 usdt from ethereum to base"]
    expected = [result.to_dict() for result in extractor.extract_batch(requests)]
    stream = extractor.stream()
    first = stream.add(requests[:2])
    assert first[1].done and first[1].result().error == "the request is empty"
    stream.step()
    rest = stream.add(requests[2:])
    while stream.busy:
        stream.step()
    tickets = [*first, *rest]
    assert all(ticket.done for ticket in tickets)
    assert [ticket.result().to_dict() for ticket in tickets] == expected
    assert rules_extractor.stream() is None  # no model: the server runs extract_batch


def test_an_output_cut_at_the_token_limit_is_an_error_never_a_plan(tiny_run_dir):
    extractor = Extractor.from_run(tiny_run_dir, batch_size=2, max_new_tokens=1)  # no valid output is 1 token
    for result in extractor.extract_batch(["swap 1 eth for usdc on base and send it to bob.eth", "wrap 2 eth"]):
        assert result.intents == [] and "limit of 1 new tokens" in result.error
        assert result.output  # what the model wrote before the limit is on record
    # the server's path (continuous batching) says the same
    stream = extractor.stream()
    ticket = stream.add(["wrap 2 eth"])[0]
    while stream.busy:
        stream.step()
    assert ticket.done and "limit of 1 new tokens" in ticket.result().error


def test_an_encoder_decoder_output_cut_at_the_token_limit_is_an_error(tiny_t5_dir):
    from brianft.config import ModelConfig

    extractor = Extractor.from_base_model(ModelConfig(base=str(tiny_t5_dir)), max_new_tokens=1, constrain=False)
    result = extractor.extract("swap 1 eth for usdc")
    assert result.intents == [] and "limit of 1 new tokens" in result.error
