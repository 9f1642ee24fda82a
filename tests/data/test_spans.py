import pytest

from brianft.data.spans import SpanFinder
from brianft.normalize import Canonicalizer
from brianft.schema import Action, Example, Intent


@pytest.fixture(scope="module")
def finder() -> SpanFinder:
    return SpanFinder(Canonicalizer.default())


@pytest.mark.parametrize(
    ("prompt", "field", "value", "span"),
    [
        ("swap 2.5k USDC for eth on Arbitrum One", "amount", "2500", "2.5k"),
        ("swap 2.5k USDC for eth on Arbitrum One", "chain", "arbitrum", "Arbitrum One"),
        ("swap 2.5k USDC for eth on Arbitrum One", "token1", "USDC", "USDC"),
        ("send one hundred and fifty dai to Bob.eth!", "amount", "150", "one hundred and fifty"),
        ("send one hundred and fifty dai to Bob.eth!", "address", "bob.eth", "Bob.eth"),
        ("bridge eth from mainnet to base", "chain", "ethereum", "mainnet"),
        ("bridge 1 eth from base to eth mainnet", "dest_chain", "ethereum", "eth mainnet"),
        ("deposit everything into Aave V3", "protocol", "aave", "Aave V3"),
        ("deposit everything into Aave V3", "amount", "max", "everything"),
        ("unstake half of my steth.", "amount", "50%", "half"),
        ("buy $PEPE with (0,5 eth)", "token1", "PEPE", "$PEPE"),
        ("buy $PEPE with (0,5 eth)", "amount", "0.5", "0,5"),
        ("send 1 eth", "address", "bob.eth", None),
    ],
)
def test_find_span(finder, prompt, field, value, span):
    assert finder.find(prompt, field, value) == span


def test_with_raw_fills_every_found_field(finder):
    example = Example(
        prompt="swap 1 ETH for USDC on base and bridge it to arbitrum",
        intents=[
            Intent(action=Action.SWAP, token1="ETH", token2="USDC", amount="1", chain="base"),
            Intent(action=Action.BRIDGE, token1="USDC", chain="base", dest_chain="arbitrum"),
        ],
    )
    raw = finder.with_raw(example).raw
    assert raw == [
        {"token1": "ETH", "token2": "USDC", "amount": "1", "chain": "base"},
        {"token1": "USDC", "chain": "base", "dest_chain": "arbitrum"},
    ]


def test_possessive_is_not_part_of_the_span(finder):
    assert finder.find("check bob.eth's eth balance", "address", "bob.eth") == "bob.eth"
    assert finder.find("what's usdc's total supply", "token1", "USDC") == "usdc"


@pytest.mark.parametrize(
    ("prompt", "intent", "raw"),
    [
        # A chain named like the token: each field copies its own occurrence.
        (
            "on arb, send 25 ARB to bob.eth",
            Intent(action=Action.TRANSFER, token1="ARB", amount="25", chain="arbitrum", address="bob.eth"),
            {"token1": "ARB", "amount": "25", "chain": "arb", "address": "bob.eth"},
        ),
        (
            "Could you wrap ten AVAX? I'm on Avalanche and need WAVAX for a pool.",
            Intent(action=Action.WRAP, token1="AVAX", amount="10", chain="avalanche"),
            {"token1": "AVAX", "amount": "ten", "chain": "Avalanche"},
        ),
        (
            "on bnb chain I have some BNB, wrap 3 of them",
            Intent(action=Action.WRAP, token1="BNB", amount="3", chain="bsc"),
            {"token1": "BNB", "amount": "3", "chain": "bnb chain"},
        ),
        # A protocol named like the token.
        (
            "I'd like to stake all my AAVE tokens in the Aave safety module.",
            Intent(action=Action.STAKE, token1="AAVE", amount="max", protocol="aave"),
            {"token1": "AAVE", "amount": "all", "protocol": "Aave"},
        ),
        (
            "Please grant Uniswap permission to spend my UNI. The amount is 100.",
            Intent(action=Action.APPROVE, token1="UNI", amount="100", protocol="uniswap"),
            {"token1": "UNI", "amount": "100", "protocol": "Uniswap"},
        ),
        # The longer chain name still beats a cued ticker ("to ETH").
        (
            "rETH to ETH, 4 rETH, ethereum mainnet",
            Intent(action=Action.SWAP, token1="RETH", token2="ETH", amount="4", chain="ethereum"),
            {"token1": "rETH", "token2": "ETH", "amount": "4", "chain": "ethereum mainnet"},
        ),
    ],
)
def test_fields_named_alike_take_their_own_words(finder, prompt, intent, raw):
    assert finder.raw_for_intent(prompt, intent) == raw
    assert list(finder.raw_for_intent(prompt, intent)) == list(intent.fields())  # field order kept


def test_an_arrow_is_a_word_even_when_glued():
    from brianft.data.spans import word_spans

    def words(text):
        return [text[start:end] for start, end in word_spans(text)]

    assert words("ETH→WETH 4.25 on arb") == ["ETH", "→", "WETH", "4.25", "on", "arb"]
    assert words("bridge 200 usdc arb->op") == ["bridge", "200", "usdc", "arb", "->", "op"]
    assert words("avax c-chain, -5") == ["avax", "c-chain", "-5"]  # a hyphen alone splits nothing


def test_glued_arrow_values_are_found(finder):
    intent = Intent(action=Action.BRIDGE, token1="USDC", amount="200", chain="arbitrum", dest_chain="optimism")
    assert finder.raw_for_intent("stargate 200 USDC arb→op", intent) == {
        "token1": "USDC",
        "amount": "200",
        "chain": "arb",
        "dest_chain": "op",
    }
