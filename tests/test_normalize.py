"""Canonicalisation of intent fields, table by table (shared/INTENT_SCHEMA.md, "canonical form")."""

from __future__ import annotations

import pytest

from brianft.normalize import (
    Canonicalizer,
    NormalizationError,
    Registry,
    RegistryError,
    canonical_address,
    canonical_amount,
    checksum_warning,
    eip55_checksum,
    same_address,
)
from brianft.schema import REQUIRED_FIELDS, Action, Intent

CANON = Canonicalizer.default()

VALID_CHECKSUMMED = "0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045"
# The same address with the case of its first letter flipped: mixed case, wrong checksum.
BAD_CHECKSUM = "0xD8dA6BF26964aF9D7eEd9e03E53415D37aA96045"
LOWER = VALID_CHECKSUMMED.lower()
UPPER = "0x" + VALID_CHECKSUMMED[2:].upper()

# --------------------------------------------------------------------------- amounts

AMOUNT_SEPARATORS = [
    ("1500", "1500"),
    ("1,500", "1500"),
    ("1,500,000", "1500000"),
    ("1,200.50", "1200.5"),
    ("12,345.678", "12345.678"),
    ("1.000.000", "1000000"),
    ("1.234,5", "1234.5"),
    ("0,5", "0.5"),
    ("2,75", "2.75"),
    (".5", "0.5"),
    (".25", "0.25"),
    ("0.50", "0.5"),
    ("1.0", "1"),
    ("1.000", "1"),
    ("100", "100"),
    ("10", "10"),
    ("2500.00", "2500"),
    ("007", "7"),
    ("  42  ", "42"),
    ("5.", "5"),
    ("0.000001", "0.000001"),
    ("0.00000000000000000001", "0.00000000000000000001"),
]

AMOUNT_SUFFIXES = [
    ("2.5k", "2500"),
    ("2.5K", "2500"),
    ("10k", "10000"),
    ("10 k", "10000"),
    (".5k", "500"),
    ("1,5k", "1500"),
    ("3M", "3000000"),
    ("3m", "3000000"),
    ("1.2mm", "1200000"),
    ("1.5 million", "1500000"),
    ("2B", "2000000000"),
    ("1bn", "1000000000"),
    ("2 billion", "2000000000"),
    ("5 grand", "5000"),
    ("2 thousand", "2000"),
]

AMOUNT_WORDS = [
    ("one", "1"),
    ("ten", "10"),
    ("Ten", "10"),
    ("seventeen", "17"),
    ("twenty five", "25"),
    ("twenty-five", "25"),
    ("Twenty Five", "25"),
    ("ninety nine", "99"),
    ("a hundred", "100"),
    ("one hundred and fifty", "150"),
    ("zero point five", "0.5"),
    ("one point two five", "1.25"),
    ("zero", "0"),
    ("0", "0"),
    ("0.0", "0"),
    ("one hundred fifty", "150"),
    ("fifteen hundred", "1500"),
    ("a thousand", "1000"),
    ("ten thousand", "10000"),
    ("two thousand five hundred", "2500"),
    ("a dozen", "12"),
    ("a million", "1000000"),
    ("three million", "3000000"),
    ("one million two hundred thousand", "1200000"),
    ("two million three hundred and forty five thousand six hundred and seventy eight", "2345678"),
    ("one billion", "1000000000"),
    ("one and a half", "1.5"),
    ("Two and a Half", "2.5"),
    ("twenty five and a quarter", "25.25"),
    ("3 and three quarters", "3.75"),
]

AMOUNT_SHARES = [
    ("half", "50%"),
    ("Half", "50%"),
    ("a half", "50%"),
    ("half of it", "50%"),
    ("quarter", "25%"),
    ("a quarter", "25%"),
    ("three quarters", "75%"),
    ("a tenth", "10%"),
    ("25%", "25%"),
    ("25 %", "25%"),
    ("50 percent", "50%"),
    ("50 per cent", "50%"),
    ("10 pct", "10%"),
    ("12.5%", "12.5%"),
    ("33.30%", "33.3%"),
    ("0.5%", "0.5%"),
    ("100%", "100%"),
]

AMOUNT_MAX = [
    ("all", "max"),
    ("ALL", "max"),
    ("everything", "max"),
    ("max", "max"),
    ("maximum", "max"),
    ("entire balance", "max"),
    ("my entire balance", "max"),
    ("the entire balance", "max"),
    ("whole loan", "max"),
    ("the whole loan", "max"),
    ("full debt", "max"),
    ("unlimited", "max"),
    ("Unlimited", "max"),
    ("all of it", "max"),
    ("everything i have", "max"),
]

AMOUNT_INVALID = [
    "banana",
    "-5",
    "- 5",
    "1e5",
    "1E5",
    "1e-5",
    "",
    "   ",
    "150%",
    "0%",
    "100.5 percent",
    "1.2.3",
    "1,2,3",
    "abc123",
    "5 apples",
    "nan",
    "inf",
    "and",
    # word sequences that are not numbers are errors, not sums
    "five five",
    "one two",
    "a five",
    "one and two",
    "twenty twenty",
    "twenty fifteen",
    "hundred hundred",
    "one hundred one hundred",
    "thousand thousand",
    "one thousand two million",
    "and a half",
    "lots and a half",
    "five five and a half",
]


@pytest.mark.parametrize(("raw", "expected"), AMOUNT_SEPARATORS)
def test_amount_separators_and_decimals(raw, expected):
    assert canonical_amount(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), AMOUNT_SUFFIXES)
def test_amount_suffixes(raw, expected):
    assert canonical_amount(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), AMOUNT_WORDS)
def test_amount_number_words(raw, expected):
    assert canonical_amount(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), AMOUNT_SHARES)
def test_amount_shares(raw, expected):
    assert canonical_amount(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), AMOUNT_MAX)
def test_amount_max_words(raw, expected):
    assert canonical_amount(raw) == expected


@pytest.mark.parametrize("raw", AMOUNT_INVALID)
def test_amount_invalid_raises(raw):
    with pytest.raises(NormalizationError):
        canonical_amount(raw)


@pytest.mark.parametrize(
    "digits",
    [
        "1234567890123456789012345678901",  # more digits than Decimal's default precision (28)
        "115792089237316195423570985008687907853269984665640564039457584007913129639935",  # 2**256 - 1
        "1000000000000000000000000000000000001",
        "0.1234567890123456789012345678901",
    ],
)
def test_amount_long_numbers_are_exact(digits):
    """An amount in wei can have 30+ digits; it must never be rounded."""
    assert canonical_amount(digits) == digits


def test_amount_long_number_with_suffix_is_exact():
    assert canonical_amount("1234567890123456789012345678.9k") == "1234567890123456789012345678900"


# --------------------------------------------------------------------------- tokens

TOKENS = [
    ("eth", "ETH"),
    ("ETH", "ETH"),
    ("Eth", "ETH"),
    ("ether", "ETH"),
    ("Ether", "ETH"),
    ("ethereum", "ETH"),
    ("bitcoin", "BTC"),
    ("tether", "USDT"),
    ("usd coin", "USDC"),
    ("USD Coin", "USDC"),
    ("wrapped ether", "WETH"),
    ("Wrapped  Ether", "WETH"),
    ("chainlink", "LINK"),
    ("Chainlink", "LINK"),
    ("lido staked ether", "STETH"),
    ("$pepe", "PEPE"),
    ("$PEPE", "PEPE"),
    ("$eth", "ETH"),
    ("$ eth", "ETH"),
    ("stETH", "STETH"),
    ("usdc.e", "USDC.E"),
    ("USDC.e", "USDC.E"),
    ("usdc", "USDC"),
    ("wbtc", "WBTC"),
    (" dai ", "DAI"),
    ("pepe", "PEPE"),
    ("1inch", "1INCH"),
    ("wif", "WIF"),
    ("sUSDe", "SUSDE"),
    (LOWER, LOWER),  # a token given by its contract address is kept as written
    (VALID_CHECKSUMMED, VALID_CHECKSUMMED),
]

TOKENS_INVALID = [
    "it",
    "IT",
    "them",
    "tokens",
    "coins",
    "",
    "   ",
    "$",
    "two words unknown",
    "eth/usdc",
    "averyveryverylongtokenname",
    "ünï",
]


@pytest.mark.parametrize(("raw", "expected"), TOKENS)
def test_token(raw, expected):
    assert CANON.token(raw) == expected


@pytest.mark.parametrize("raw", TOKENS_INVALID)
def test_token_invalid_raises(raw):
    with pytest.raises(NormalizationError):
        CANON.token(raw)


# --------------------------------------------------------------------------- chains

CHAIN_SLUGS = [
    "ethereum",
    "base",
    "arbitrum",
    "optimism",
    "polygon",
    "gnosis",
    "bsc",
    "avalanche",
    "zksync",
    "linea",
    "scroll",
    "blast",
    "mantle",
    "celo",
    "fantom",
    "taiko",
    "chiado",
    "sepolia",
    "solana",
    "tron",
    "opbnb",
    "starknet",
    "ronin",
    "cronos",
    "aptos",
    "unichain",
]

CHAIN_SYNONYMS = [
    ("opBNB", "opbnb"),
    ("op bnb", "opbnb"),
    ("mainnet", "ethereum"),
    ("Mainnet", "ethereum"),
    ("eth mainnet", "ethereum"),
    ("ethereum mainnet", "ethereum"),
    ("Ethereum Mainnet", "ethereum"),
    ("L1", "ethereum"),
    ("l1", "ethereum"),
    ("base mainnet", "base"),
    ("arbitrum one", "arbitrum"),
    ("Arbitrum One", "arbitrum"),
    ("arb", "arbitrum"),
    ("op", "optimism"),
    ("OP", "optimism"),
    ("op mainnet", "optimism"),
    ("matic", "polygon"),
    ("polygon pos", "polygon"),
    ("Polygon PoS", "polygon"),
    ("gnosis chain", "gnosis"),
    ("xdai chain", "gnosis"),
    ("bnb chain", "bsc"),
    ("BNB Chain", "bsc"),
    ("bnb smart chain", "bsc"),
    ("binance smart chain", "bsc"),
    ("BSC", "bsc"),
    ("avax", "avalanche"),
    ("avalanche c-chain", "avalanche"),
    ("Avalanche C-Chain", "avalanche"),
    ("zksync era", "zksync"),
    ("zkSync Era", "zksync"),
]

CHAIN_MISSPELLINGS = [
    ("arbitrun", "arbitrum"),
    ("optimsim", "optimism"),
    ("polygn", "polygon"),
    ("etherum", "ethereum"),
    ("Etherium", "ethereum"),
    ("avalance", "avalanche"),
    ("zksnyc", "zksync"),
]

CHAIN_NOISE = [
    ("base chain", "base"),
    ("the arbitrum network", "arbitrum"),
    ("Arbitrum network", "arbitrum"),
    ("the Base blockchain", "base"),
    ("polygon mainnet", "polygon"),
    ("Arbitrum.", "arbitrum"),
    ("  optimism  ", "optimism"),
]

CHAIN_UNKNOWN = [
    ("Hyperliquid", "hyperliquid"),
    ("Berachain", "berachain"),
    ("Monad", "monad"),
    ("SONIC", "sonic"),
    ("Ink", "ink"),
]

CHAINS_INVALID = ["", "   ", "???", "base/arbitrum", "ünïcode"]


@pytest.mark.parametrize("slug", CHAIN_SLUGS)
def test_chain_slug_is_itself(slug):
    assert CANON.chain(slug) == slug
    assert CANON.chain(slug.upper()) == slug
    assert CANON.is_known_chain(slug)


@pytest.mark.parametrize(("raw", "expected"), CHAIN_SYNONYMS)
def test_chain_synonym(raw, expected):
    assert CANON.chain(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), CHAIN_MISSPELLINGS)
def test_chain_misspelling(raw, expected):
    assert CANON.chain(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), CHAIN_NOISE)
def test_chain_noise_words(raw, expected):
    assert CANON.chain(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), CHAIN_UNKNOWN)
def test_chain_unknown_kept_lower_cased(raw, expected):
    assert CANON.chain(raw) == expected
    assert not CANON.is_known_chain(expected)


@pytest.mark.parametrize("raw", CHAINS_INVALID)
def test_chain_invalid_raises(raw):
    with pytest.raises(NormalizationError):
        CANON.chain(raw)


# --------------------------------------------------------------------------- addresses

ADDRESSES = [
    (VALID_CHECKSUMMED, VALID_CHECKSUMMED),
    (LOWER, LOWER),
    (UPPER, UPPER),
    (BAD_CHECKSUM, BAD_CHECKSUM),  # kept exactly as written, never "repaired"
    (f"  {VALID_CHECKSUMMED}\n", VALID_CHECKSUMMED),
    ("Bob.eth", "bob.eth"),
    ("bob.eth", "bob.eth"),
    ("VITALIK.ETH", "vitalik.eth"),
    ("pay.alice.eth", "pay.alice.eth"),
    ("alice.base.eth", "alice.base.eth"),
    ("my-wallet.eth", "my-wallet.eth"),
    ("0xMaki.eth", "0xmaki.eth"),  # an ENS name that happens to start with 0x
    ("7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV", "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV"),
]

ADDRESSES_INVALID = [
    VALID_CHECKSUMMED[:-1],  # 39 hex digits
    VALID_CHECKSUMMED + "0",  # 41 hex digits
    "0x",
    "0x123",
    "0x" + "g" * 40,
    "d8dA6BF26964aF9D7eEd9e03E53415D37aA96045d8",
    "bob",
    "",
    "hello world",
    "@bob",
    "bob.",
]


@pytest.mark.parametrize(("raw", "expected"), ADDRESSES)
def test_address(raw, expected):
    assert canonical_address(raw) == expected


@pytest.mark.parametrize("raw", ADDRESSES_INVALID)
def test_address_invalid_raises(raw):
    with pytest.raises(NormalizationError):
        canonical_address(raw)


@pytest.mark.parametrize(
    ("address", "warns"),
    [
        (VALID_CHECKSUMMED, False),
        (LOWER, False),
        (UPPER, False),
        (BAD_CHECKSUM, True),
        ("0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045".replace("aF9D", "Af9D"), True),
        ("bob.eth", False),
        ("not an address", False),
    ],
)
def test_checksum_warning(address, warns):
    warning = checksum_warning(address)
    if warns:
        assert warning is not None and address in warning
    else:
        assert warning is None


def test_eip55_checksum_and_same_address():
    assert eip55_checksum(LOWER) == VALID_CHECKSUMMED
    assert eip55_checksum(UPPER) == VALID_CHECKSUMMED
    assert same_address(VALID_CHECKSUMMED, LOWER)
    assert not same_address(VALID_CHECKSUMMED, "0x" + "0" * 40)


# --------------------------------------------------------------------------- protocols

PROTOCOLS = [
    ("Aave v3", "aave"),
    ("aave", "aave"),
    ("AAVE V2", "aave"),
    ("aave-v3", "aave"),
    ("Curve v2.5", "curve"),
    ("Aave Protocol", "aave"),
    ("Rocket Pool", "rocketpool"),
    ("rocketpool", "rocketpool"),
    ("ether.fi", "etherfi"),
    ("Ether.fi", "etherfi"),
    ("etherfi", "etherfi"),
    ("Compound III", "compound"),
    ("compound v2", "compound"),
    ("Compound Finance", "compound"),
    ("Lido", "lido"),
    ("Lido Finance", "lido"),
    ("Uniswap V3", "uniswap"),
    ("uniswap version 3", "uniswap"),
    ("Eigen Layer", "eigenlayer"),
    ("EigenLayer", "eigenlayer"),
    ("Morpho Blue", "morpho"),
    ("1inch", "1inch"),
    ("Curve Finance", "curve"),
    ("MakerDAO", "maker"),
    ("Kelp DAO", "kelp"),
    ("Fluid", "fluid"),
    ("Instadapp Fluid", "fluid"),
    ("Euler v2", "euler"),
    ("Euler Finance", "euler"),
    ("Kamino Finance", "kamino"),
    ("Kamino Lend", "kamino"),
    ("Moonwell", "moonwell"),
    ("Seamless Protocol", "seamless"),
    ("Liquity v2", "liquity"),
    ("Aerodrome Finance", "aerodrome"),
    ("Odos", "odos"),
    ("ParaSwap", "paraswap"),
    ("Para Swap", "paraswap"),
    ("Velora", "paraswap"),
    ("Gearbox Protocol", "gearboxprotocol"),  # unknown protocols: squashed slug
    ("Hawaii", "hawaii"),  # a trailing "ii" inside a word is not a version
    ("Symbiotic", "symbiotic"),
    ("Stargate Finance", "stargate"),
    ("KyberSwap", "kyberswap"),
    ("Kyber Network", "kyberswap"),
    ("ZeroLend", "zerolend"),
    ("StakeWise", "stakewise"),
    ("OpenSea", "opensea"),
]

PROTOCOLS_INVALID = ["", "   ", "v3", "???", "ünï"]


@pytest.mark.parametrize(("raw", "expected"), PROTOCOLS)
def test_protocol(raw, expected):
    assert CANON.protocol(raw) == expected


@pytest.mark.parametrize("raw", PROTOCOLS_INVALID)
def test_protocol_invalid_raises(raw):
    with pytest.raises(NormalizationError):
        CANON.protocol(raw)


# --------------------------------------------------------------------------- Canonicalizer.value


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [
        ("token1", "ether", "ETH"),
        ("token2", "$pepe", "PEPE"),
        ("amount", "2.5k", "2500"),
        ("amount_out", "1,000", "1000"),
        ("chain", "mainnet", "ethereum"),
        ("dest_chain", "Arbitrum One", "arbitrum"),
        ("address", "Bob.eth", "bob.eth"),
        ("protocol", "Aave v3", "aave"),
    ],
)
def test_value_dispatches_per_field(field, raw, expected):
    assert CANON.value(field, raw) == expected


def test_value_unknown_field_raises():
    with pytest.raises(NormalizationError, match="unknown field"):
        CANON.value("token3", "eth")


# --------------------------------------------------------------------------- Canonicalizer.intent


def test_intent_schema_example():
    raw = {"action": "swap", "token1": "eth", "token2": "usdc", "amount": "2.5k", "chain": "Arbitrum One"}
    result = CANON.intent(raw)
    assert result.problems == []
    assert result.intent is not None
    assert result.intent.to_dict() == {
        "action": "swap",
        "token1": "ETH",
        "token2": "USDC",
        "amount": "2500",
        "chain": "arbitrum",
    }


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("swap", Action.SWAP),
        ("Swap", Action.SWAP),
        (" BRIDGE ", Action.BRIDGE),
        ("total supply", Action.TOTAL_SUPPLY),
    ],
)
def test_intent_action_is_normalised(action, expected):
    result = CANON.intent({"action": action})
    assert result.intent is not None and result.intent.action is expected


@pytest.mark.parametrize("action", ["teleport", "swapp", "none", 5])
def test_intent_unknown_action(action):
    result = CANON.intent({"action": action, "token1": "eth"})
    assert result.intent is None
    assert [(p.severity, p.field) for p in result.problems] == [("error", "action")]
    assert "unknown action" in result.problems[0].message


@pytest.mark.parametrize("raw", [{}, {"action": None}, {"action": ""}, {"action": "   "}, {"token1": "eth"}])
def test_intent_missing_action(raw):
    result = CANON.intent(raw)
    assert result.intent is None
    assert len(result.errors) == 1
    assert result.errors[0].field == "action"
    assert result.errors[0].message == "missing action"


@pytest.mark.parametrize("raw", [["swap"], "swap", None, 3])
def test_intent_not_a_mapping(raw):
    result = CANON.intent(raw)
    assert result.intent is None
    assert len(result.errors) == 1 and result.errors[0].field is None


def test_intent_unknown_field_is_an_error_and_dropped():
    result = CANON.intent({"action": "swap", "token1": "eth", "token3": "btc"})
    assert [(p.severity, p.field) for p in result.problems] == [("error", "token3")]
    assert "unknown field" in result.problems[0].message
    assert result.intent is not None and result.intent.to_dict() == {"action": "swap", "token1": "ETH"}


def test_intent_disallowed_field_is_an_error_and_dropped():
    result = CANON.intent({"action": "transfer", "token1": "eth", "protocol": "aave", "dest_chain": "base"})
    assert sorted(p.field for p in result.errors) == ["dest_chain", "protocol"]
    assert all("not allowed" in p.message for p in result.errors)
    assert result.intent is not None and result.intent.to_dict() == {"action": "transfer", "token1": "ETH"}
    assert result.intent.disallowed_fields() == []


@pytest.mark.parametrize("value", [5, 2.5, True, ["1"], {"x": 1}])
def test_intent_strict_rejects_non_strings(value):
    result = CANON.intent({"action": "swap", "amount": value}, strict=True)
    assert [(p.severity, p.field) for p in result.problems] == [("error", "amount")]
    assert "must be a string" in result.problems[0].message
    assert result.intent is not None and result.intent.amount is None


@pytest.mark.parametrize(("value", "expected"), [(5, "5"), (2.5, "2.5"), (1500, "1500")])
def test_intent_lenient_converts_numbers(value, expected):
    result = CANON.intent({"action": "swap", "amount": value})
    assert result.problems == []
    assert result.intent is not None and result.intent.amount == expected


@pytest.mark.parametrize("value", [True, False, ["1"], {"x": 1}])
def test_intent_lenient_still_rejects_other_types(value):
    result = CANON.intent({"action": "swap", "amount": value})
    assert [p.field for p in result.errors] == ["amount"]
    assert result.intent is not None and result.intent.amount is None


@pytest.mark.parametrize("empty", [None, "", "   ", "\n"])
@pytest.mark.parametrize("strict", [False, True])
def test_intent_none_and_empty_are_absent(empty, strict):
    raw = {"action": "transfer", "token1": "usdc", "amount": empty, "address": empty, "chain": empty}
    result = CANON.intent(raw, strict=strict)
    assert result.problems == []
    assert result.intent is not None
    assert result.intent.to_dict() == {"action": "transfer", "token1": "USDC"}
    assert result.intent.missing() == ["amount", "address"]


def test_intent_absent_disallowed_field_is_not_an_error():
    result = CANON.intent({"action": "wrap", "amount": "1", "protocol": None, "token2": ""})
    assert result.problems == []


def test_intent_unknown_chain_is_a_warning():
    result = CANON.intent({"action": "bridge", "token1": "eth", "chain": "Hyperliquid", "dest_chain": "base"})
    assert result.errors == []
    assert [(p.severity, p.field) for p in result.warnings] == [("warning", "chain")]
    assert "hyperliquid" in result.warnings[0].message
    assert result.intent is not None and result.intent.chain == "hyperliquid"


def test_intent_unknown_dest_chain_is_a_warning():
    result = CANON.intent({"action": "bridge", "token1": "eth", "dest_chain": "monad"})
    assert [p.field for p in result.warnings] == ["dest_chain"]


def test_intent_bad_checksum_is_a_warning_and_kept():
    result = CANON.intent({"action": "transfer", "token1": "eth", "amount": "1", "address": BAD_CHECKSUM})
    assert result.errors == []
    assert [(p.severity, p.field) for p in result.warnings] == [("warning", "address")]
    assert "checksum" in str(result.warnings[0])
    assert result.intent is not None and result.intent.address == BAD_CHECKSUM


@pytest.mark.parametrize("address", [VALID_CHECKSUMMED, LOWER, "bob.eth"])
def test_intent_good_address_has_no_warning(address):
    result = CANON.intent({"action": "transfer", "token1": "eth", "amount": "1", "address": address})
    assert result.problems == []


def test_intent_bad_value_is_an_error_and_dropped():
    result = CANON.intent({"action": "transfer", "token1": "it", "amount": "banana", "address": "0x123"})
    assert sorted(p.field for p in result.errors) == ["address", "amount", "token1"]
    assert result.intent is not None
    assert result.intent.fields() == {}
    assert result.intent.missing() == ["token1", "amount", "address"]


def test_problem_str():
    result = CANON.intent({"action": "swap", "amount": "banana"})
    assert str(result.errors[0]).startswith("amount: ")
    result = CANON.intent([])
    assert str(result.errors[0]) == "an intent must be an object"


MISSING = [
    # every action with nothing but the action: the first alternative of every requirement
    *[(action, {}, [alternatives[0] for alternatives in REQUIRED_FIELDS[action]]) for action in Action],
    ("swap", {"token1": "ETH", "token2": "USDC", "amount": "1"}, []),
    ("swap", {"token1": "ETH", "token2": "USDC", "amount_out": "1000"}, []),
    ("swap", {"token1": "ETH", "token2": "USDC"}, ["amount"]),
    ("swap", {"amount_out": "5"}, ["token1", "token2"]),
    ("bridge", {"token1": "USDC", "amount": "10", "dest_chain": "base"}, []),
    ("bridge", {"token1": "USDC", "chain": "base", "amount": "10"}, ["dest_chain"]),
    ("transfer", {"token1": "ETH", "amount": "1", "address": "bob.eth"}, []),
    ("transfer", {"token1": "ETH", "address": "bob.eth"}, ["amount"]),
    ("balance", {"token1": "ETH"}, []),
    ("approve", {"token1": "USDC", "amount": "max", "address": LOWER}, []),
    ("approve", {"token1": "USDC", "amount": "max", "protocol": "aave"}, []),
    ("approve", {"token1": "USDC", "amount": "max"}, ["address"]),
    ("wrap", {"amount": "1"}, []),
    ("unwrap", {"token1": "WETH"}, ["amount"]),
    ("deposit", {"token1": "ETH", "amount": "1", "protocol": "aave"}, []),
    ("withdraw", {"token1": "ETH", "protocol": "aave"}, ["amount"]),
    ("borrow", {"amount": "100"}, ["token1"]),
    ("repay", {"token1": "GHO", "amount": "max"}, []),
    ("stake", {"token1": "ETH", "amount": "32", "protocol": "lido"}, []),
    ("unstake", {"protocol": "lido"}, ["token1", "amount"]),
    ("total_supply", {"token1": "USDC"}, []),
    ("total_supply", {"chain": "base"}, ["token1"]),
]


@pytest.mark.parametrize(("action", "fields", "expected"), MISSING)
def test_missing_required_fields(action, fields, expected):
    assert Intent(action=action, **fields).missing() == expected
    # the same through the canonicaliser
    result = CANON.intent({"action": action, **fields})
    assert result.problems == []
    assert result.intent is not None and result.intent.missing() == expected


def test_missing_table_covers_the_schema():
    assert {Action(row[0]) for row in MISSING} == set(Action)
    assert Intent(action="swap").missing() == ["token1", "token2", "amount"]
    assert Intent(action="approve").missing() == ["token1", "amount", "address"]
    assert Intent(action="balance").missing() == []


# --------------------------------------------------------------------------- registry


def test_packaged_registry_matches_the_schema():
    registry = Registry.load()
    assert registry.chain_slugs == set(CHAIN_SLUGS)
    for name, ticker in [
        ("ether", "ETH"),
        ("eth", "ETH"),
        ("bitcoin", "BTC"),
        ("tether", "USDT"),
        ("usd coin", "USDC"),
        ("wrapped ether", "WETH"),
        ("chainlink", "LINK"),
    ]:
        assert registry.tokens[name] == ticker


def test_registry_lists_the_names_it_was_given_not_what_canonicalises_to_them():
    registry = Registry.load()
    assert registry.lists("Rocket  Pool", "protocols")  # case and spacing as the files are read
    assert registry.lists("USD Coin", "tokens") and not registry.lists("USD Coin", "chains", "protocols")
    assert registry.lists("binance smart chain", "chains", "protocols")
    assert not registry.lists("aave v3", "protocols")  # canonicalises to aave, but is no listed name


def test_registry_extra_directory(tmp_path):
    (tmp_path / "tokens.yaml").write_text("moo deng: moodeng\nEther: WETH  # later wins\n")
    (tmp_path / "chains.yaml").write_text("base: [coinbase l2]\nHyperliquid: [hl, Hyper EVM]\n")
    (tmp_path / "protocols.yaml").write_text("gearbox: [gearbox protocol]\nsilo: [silo finance]\n")
    canon = Canonicalizer(Registry.load([tmp_path]))
    # added
    assert canon.token("Moo Deng") == "MOODENG"
    assert canon.chain("Coinbase L2") == "base"
    assert canon.chain("hyper evm") == "hyperliquid"
    assert canon.is_known_chain("hyperliquid")
    assert canon.protocol("Gearbox Protocol") == "gearbox"
    assert canon.protocol("Silo Finance") == "silo"
    # overridden
    assert canon.token("ether") == "WETH"
    # packaged entries are still there
    assert canon.token("bitcoin") == "BTC"
    assert canon.chain("base mainnet") == "base"
    assert canon.chain("arbitrum one") == "arbitrum"
    assert canon.protocol("Rocket Pool") == "rocketpool"
    # the default canonicaliser is untouched
    assert CANON.chain("coinbase l2") == "coinbase l2"
    assert not CANON.is_known_chain("hyperliquid")
    assert CANON.protocol("Gearbox Protocol") == "gearboxprotocol"


def test_registry_extra_directory_may_hold_some_files_or_none(tmp_path):
    (tmp_path / "chains.yaml").write_text("")  # an empty file is an empty mapping
    assert Registry.load([tmp_path]) == Registry.load()
    assert Registry.load([str(tmp_path)]) == Registry.load()


@pytest.mark.parametrize(
    ("filename", "text", "match"),
    [
        ("tokens.yaml", "ether: [unclosed\n", "cannot read"),
        ("chains.yaml", "base: {\n", "cannot read"),
        ("protocols.yaml", "\tfoo: : :\n", "cannot read"),
        ("tokens.yaml", "- eth\n- btc\n", "must be a mapping"),
        ("chains.yaml", "just a string\n", "must be a mapping"),
        ("tokens.yaml", "ether: [ETH]\n", "ticker string"),
        ("tokens.yaml", "ether: 3\n", "ticker string"),
        ("tokens.yaml", "ether: ''\n", "ticker string"),
        ("chains.yaml", "base: coinbase l2\n", "list of names"),
        ("chains.yaml", "base: [1, 2]\n", "list of names"),
        ("protocols.yaml", "aave: {v3: x}\n", "list of names"),
    ],
)
def test_registry_bad_file(tmp_path, filename, text, match):
    (tmp_path / filename).write_text(text)
    with pytest.raises(RegistryError, match=match):
        Registry.load([tmp_path])


# --------------------------------------------------------------------------- actions the registry settles


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # a staking-only protocol takes no deposit or withdrawal
        (
            {"action": "withdraw", "token1": "eth", "amount": "50", "protocol": "Lido"},
            {"action": "unstake", "token1": "ETH", "amount": "50", "protocol": "lido"},
        ),
        (
            {"action": "deposit", "token1": "steth", "amount": "half", "protocol": "EigenLayer", "chain": "mainnet"},
            {"action": "stake", "token1": "STETH", "amount": "50%", "protocol": "eigenlayer", "chain": "ethereum"},
        ),
        # a native coin for its own wrapped token, or back, is a wrap or an unwrap
        (
            {"action": "swap", "token1": "weth", "token2": "eth", "amount": "2", "chain": "arbitrum one"},
            {"action": "unwrap", "token1": "WETH", "amount": "2", "chain": "arbitrum"},
        ),
        (
            {"action": "swap", "token1": "bnb", "token2": "wbnb", "amount_out": "3"},
            {"action": "wrap", "token1": "BNB", "amount": "3"},  # one to one: the amount received is the amount given
        ),
    ],
)
def test_registry_facts_settle_the_action_and_say_so(raw, expected):
    result = CANON.intent(raw)
    assert result.intent.to_dict() == expected
    assert [(p.severity, p.field) for p in result.problems] == [("warning", "action")]
    assert raw["action"] in result.problems[0].message and expected["action"] in result.problems[0].message
    # a label must already name the settled action
    assert CANON.intent({**raw, "token1": raw["token1"].upper()}, strict=True).errors[0].field == "action"


@pytest.mark.parametrize(
    "raw",
    [
        {"action": "withdraw", "token1": "usdc", "amount": "5", "protocol": "aave"},  # aave lends (and stakes)
        {"action": "withdraw", "token1": "weth", "amount": "5"},  # no protocol named: nothing to settle
        {"action": "deposit", "token1": "eth", "amount": "1", "protocol": "mystery"},  # unknown protocol
        {"action": "stake", "token1": "eth", "amount": "1", "protocol": "lido"},
        {"action": "swap", "token1": "weth", "token2": "usdc", "amount": "1"},
        {"action": "swap", "token1": "eth", "token2": "wbnb", "amount": "1"},  # not its own wrapped token
        {"action": "swap", "token1": "weth", "amount": "1"},
    ],
)
def test_registry_facts_leave_other_actions_alone(raw):
    result = CANON.intent(raw)
    assert result.intent.action == raw["action"] and result.problems == []


def test_registry_kinds_file_extends_and_replaces(tmp_path):
    (tmp_path / "kinds.yaml").write_text("staking_protocols: [Gearbox, Rocket Pool]\nwrapped_natives: {hype: whype}\n")
    canon = Canonicalizer(Registry.load([tmp_path]))

    def withdraw_from(protocol):
        return canon.intent({"action": "withdraw", "token1": "eth", "amount": "1", "protocol": protocol}).intent.action

    assert withdraw_from("gearbox") == "unstake"
    assert withdraw_from("rocketpool") == "unstake"  # listed by another of its names
    assert withdraw_from("lido") == "withdraw"  # the list replaces the packaged one
    assert canon.intent({"action": "swap", "token1": "HYPE", "token2": "whype", "amount": "1"}).intent.action == "wrap"


def test_packaged_staking_protocols_and_wrapped_natives_are_registry_names():
    registry = Registry.load()
    assert registry.staking_protocols and registry.staking_protocols <= registry.protocol_slugs
    assert registry.wrapped_natives["ETH"] == "WETH"
    assert all(wrapped == "W" + native for native, wrapped in registry.wrapped_natives.items())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("staking_protocols: lido\n", "list of protocol slugs"),
        ("staking_protocols: [1]\n", "list of protocol slugs"),
        ("wrapped_natives: [ETH, WETH]\n", "wrapped tickers"),
        ("wrapped_natives: {ETH: 3}\n", "wrapped tickers"),
        ("lending_protocols: [aave]\n", "unknown keys"),
    ],
)
def test_registry_bad_kinds_file(tmp_path, text, match):
    (tmp_path / "kinds.yaml").write_text(text)
    with pytest.raises(RegistryError, match=match):
        Registry.load([tmp_path])


def test_registry_missing_directory(tmp_path):
    with pytest.raises(RegistryError, match="not found"):
        Registry.load([tmp_path / "nope"])
    (tmp_path / "file").write_text("")
    with pytest.raises(RegistryError, match="not found"):
        Registry.load([tmp_path / "file"])
