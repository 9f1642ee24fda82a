"""Synthetic labelled requests: template families x paraphrases x value pools x noise.

Why synthetic data looks like this (shared/FINETUNING_NOTES.md, "A calibration run"): a model
trained on a few crude templates failed on phrasings it never saw ("buy X with Y", "tip",
"wire"), on values it had to rewrite ("2.5k", "mainnet", "one hundred and fifty") and on
multi-intent and out-of-scope requests. So coverage of phrasing matters more than volume,
and every value is recorded *as written* (`Example.raw`) for copy-style targets, with the
canonical label computed by `brianft.normalize` from that exact text.

The pieces:

* A `Family` is one way of asking for something: an action tag, a few templates and a
  binding from intent fields to template slots. Labels follow by construction: a field
  is set exactly when the slot bound to it was rendered.
* Template syntax: `{slot}` a value, `(a|b|c)` one alternative, `[...]` optional (half the
  time; the slots inside are then absent), `<name>` a shared phrase from `PHRASES`.
  `{qty}` / `{qty2}` render an amount with its token ("2.5k usdc", "half my eth", "all my
  dai") and fill the slots `amt`/`tok` (`amt2`/`tok2`). `{amt2=amt}` writes the value of
  `amt` again under a new slot name, so that a later intent can be bound to the second
  mention only ("wrap 1 eth and deposit 1 weth" vs "... and deposit the weth").
* Slot kinds come from the name without its digits: tok, amt, out, chain, dest, addr, proto.
  Each draws from a value pool (`Family.pools` overrides the default per slot).
* Noise (lower/upper/sentence case, typos in verbs and fillers, emojis, filler words,
  extra spaces) never touches a value except by whole-prompt case change, and never
  changes a 0x address at all; every raw value is re-checked after noise.

`HELD_OUT_FAMILIES` are kept out of train/validation so the test split measures
generalisation to unseen *templates* (sentence structures); every action keeps at least one
training family. Their vocabulary is not held out: every content word of a held-out template
("unbond", "pay back", "-> weth", "pumping") also appears in some training template of the same
action (for multi-intent and out-of-scope families: of the same kind), in another sentence
structure, and no held-out template's text is a training template's text
(tests/data/test_generate.py checks both). Real users do say those words, so a model must learn
them; a held-out split full of never-seen verbs measured guessing, not generalisation (an earlier
run scored 0.45 exact match on it against 0.80 on the curated test requests, mostly on such words).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from brianft.normalize import Canonicalizer, eip55_checksum
from brianft.schema import ALLOWED_FIELDS, FIELDS, Action, Example, Intent

Kind = Literal["single", "missing", "multi", "out_of_scope"]
Binding = Mapping[str, str | tuple[str, ...]]  # field -> slot name (or alternatives, first rendered wins)

# Share of each family kind in the output: the bulk are single requests, but the model must see
# enough multi-intent, out-of-scope and incomplete requests to learn them at all.
KIND_WEIGHTS: dict[str, float] = {"single": 0.72, "multi": 0.12, "out_of_scope": 0.08, "missing": 0.08}

# --------------------------------------------------------------------------- value pools

# Tokens as people write them: tickers in several cases, "$" cashtags, registry names.
_STABLES = (
    "usdc", "USDC", "usd coin", "USD Coin", "usdt", "USDT", "tether", "dai", "DAI", "gho", "GHO",
    "USDe", "crvUSD", "usdc.e", "FRAX", "LUSD", "pyusd",
)  # fmt: skip
_ETH = ("eth", "ETH", "ether", "Ether", "Eth")
_WETH = ("weth", "WETH", "wrapped ether", "Wrapped Ether", "wrapped eth", "wEth")
_LSTS = (
    "stETH", "steth", "rETH", "reth", "wstETH", "eETH", "weETH", "cbETH", "ezETH", "rsETH",
    "lido staked ether", "staked ether", "osETH", "mETH",
)  # fmt: skip
TOKEN_POOLS: dict[str, tuple[str, ...]] = {
    "trade": (
        *_ETH, *_STABLES[:11], *_WETH[:3], "WBTC", "wbtc", "wrapped bitcoin", "LINK", "link",
        "chainlink", "UNI", "uni", "AAVE", "ARB", "arb", "OP", "PEPE", "pepe", "$pepe", "$PEPE",
        "SHIB", "shiba inu", "DOGE", "$doge", "MATIC", "matic", "POL", "cbETH", "wstETH", "stETH",
        "LDO", "ldo", "MKR", "CRV", "crv", "SNX", "WIF", "$wif", "BONK", "bonk", "DEGEN", "$degen",
        "BRETT", "ENA", "EIGEN", "PENDLE", "GMX", "COMP", "RPL", "1INCH", "cbBTC", "tBTC", "SOL",
        "sol", "BNB", "AVAX", "avax", "USDe", "crvUSD",
    ),
    "stable": _STABLES,
    "lend": (
        *_STABLES, *_ETH[:3], *_WETH[:3], "wbtc", "WBTC", "wrapped bitcoin", "wstETH", "cbETH",
        "rETH", "weETH", "link", "LINK", "cbBTC",
    ),
    "borrow": (*_STABLES, *_ETH[:3], "weth", "WETH", "wbtc"),
    "native": (*_ETH, "matic", "MATIC", "pol", "avax", "AVAX", "bnb", "BNB", "xdai", "celo", "ftm"),
    "eth": _ETH,
    "wrapped": (*_WETH, "WMATIC", "wmatic", "WAVAX", "wbnb", "WBNB", "wxdai"),
    "weth": _WETH,
    "stake": (*_ETH, *_ETH, "matic", "MATIC", "sol", "SOL", "avax"),
    "lst": _LSTS,
    "unstake": (*_ETH, *_LSTS, "sol", "SOL", "matic"),
}  # fmt: skip

# Chains: slugs, synonyms and a few misspellings that the canonicaliser's fuzzy match maps back.
CHAINS: tuple[str, ...] = (
    "ethereum", "Ethereum", "mainnet", "Mainnet", "eth mainnet", "Ethereum mainnet", "L1",
    "base", "Base", "base", "arbitrum", "Arbitrum", "arbitrum one", "Arbitrum One", "arb", "Arb",
    "optimism", "Optimism", "op", "OP Mainnet", "polygon", "Polygon", "matic", "polygon pos",
    "Polygon PoS", "gnosis", "Gnosis", "gnosis chain", "xdai", "bsc", "BSC", "bnb chain",
    "BNB Chain", "binance smart chain", "avalanche", "Avalanche", "avax", "Avalanche C-Chain",
    "zksync", "zkSync", "zkSync Era", "linea", "Linea", "scroll", "Scroll", "blast", "Blast",
    "mantle", "Mantle", "celo", "fantom", "taiko", "sepolia",
    "arbitrun", "optimsim", "polgyon", "etherum", "avalanch", "arbitum",
)  # fmt: skip

PROTOCOL_POOLS: dict[str, tuple[str, ...]] = {
    "lending": (
        "Aave v3", "Aave V3", "aave", "Aave", "AAVE", "aave v3", "Compound", "compound",
        "Compound v3", "Compound III", "Morpho", "morpho", "Morpho Blue", "Spark", "spark",
        "SparkLend", "Venus", "venus", "Radiant", "Benqi", "Euler", "Fluid", "Moonwell", "Seamless",
    ),
    "staking": (
        "Lido", "lido", "Lido Finance", "Rocket Pool", "rocket pool", "RocketPool", "ether.fi",
        "Ether.fi", "etherfi", "Stader", "Frax", "Swell", "Jito", "Marinade",
    ),
    "restaking": (
        "EigenLayer", "eigenlayer", "Eigen Layer", "Eigenlayer", "Symbiotic", "Karak", "Renzo",
        "Kelp DAO", "kelp", "ether.fi",
    ),
    "unstaking": (
        "Lido", "lido", "Rocket Pool", "rocket pool", "ether.fi", "EigenLayer", "eigenlayer",
        "Renzo", "Stader", "Swell", "Jito", "Marinade",
    ),
    "spender": (
        "Uniswap", "uniswap", "Uniswap v3", "1inch", "Permit2", "CoW Swap", "Curve", "curve",
        "SushiSwap", "sushi", "PancakeSwap", "Aave", "aave", "Compound", "Morpho", "Balancer",
        "Pendle", "Paraswap", "Odos", "Aerodrome", "aerodrome",
    ),
}  # fmt: skip

_ENS_NAMES = (
    "bob", "alice", "carol", "dave", "vitalik", "satoshi", "mom", "dad", "frank", "lisa", "nick",
    "jesse", "maria", "sam", "ken", "tom", "anna", "leo", "zoe", "max", "treasury", "degen",
    "gigabrain", "wagmi", "jules", "priya", "omar", "chen", "sofia", "lucas", "kim", "ivan",
)  # fmt: skip
_ENS_SUFFIXES = (".eth", ".eth", ".eth", ".eth", ".base.eth", ".xyz")

_SHARES = ("half", "half", "50%", "25%", "10%", "75%", "a quarter", "20 percent", "33%")
_MAXES = ("all", "all", "all", "max", "entire balance", "whole bag", "everything")
_UNLIMITED = ("unlimited", "infinite", "max")
_WORD_NUMBERS = (
    *range(1, 21), 25, 30, 40, 45, 50, 60, 75, 99, 100, 120, 150, 200, 250, 300, 500, 750,
    1000, 1200, 1500, 2000, 2500, 5000, 10000, 20000, 250000,
)  # fmt: skip
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _number_words(n: int, rng: random.Random) -> str:
    """1 <= n < 1e6 in words, with the variants people write ("and", hyphens)."""
    if n >= 1000:
        thousands, rest = divmod(n, 1000)
        head = f"{_number_words(thousands, rng)} thousand"
        return head if not rest else f"{head} {_number_words(rest, rng)}"
    if n >= 100:
        hundreds, rest = divmod(n, 100)
        head = f"{_ONES[hundreds]} hundred"
        return head if not rest else head + rng.choice((" and ", " ")) + _number_words(rest, rng)
    if n >= 20:
        tens, ones = divmod(n, 10)
        return _TENS[tens] if not ones else _TENS[tens] + rng.choice((" ", "-")) + _ONES[ones]
    return _ONES[n]


def _amount(rng: random.Random) -> str:
    """A positive quantity in one of the notations the canonicaliser reads."""
    r = rng.random()
    if r < 0.28:  # integers of every size
        return str(rng.choice((rng.randint(1, 10), rng.randint(10, 100), rng.randint(100, 999), 5, 50, 100)))
    if r < 0.48:  # decimals: "0.5", ".5", "0,5" (decimal comma), "1.25"
        whole = rng.choice((0, 0, 0, 1, 2, 3, 5, 10, 12))
        frac = rng.choice(("5", "25", "75", "1", "05", "01", "2", "3", "125", "15"))
        if whole == 0 and rng.random() < 0.35:
            return "." + frac
        if rng.random() < 0.2:
            return f"{whole},{frac[:2]}"  # at most 2 digits, or it would read as thousands
        return f"{whole}.{frac}"
    if r < 0.55:  # trailing zeros: "1.0", "2.50"
        return rng.choice(("1.0", "2.0", "2.50", "10.00", "0.50", "100.0", "1.50"))
    if r < 0.66:  # thousands separators: "1,500", "10,000", "1,200.50"
        n = rng.choice((rng.randint(1, 20), rng.randint(1, 99))) * 1000 + rng.choice(
            (0, 0, 500, 250, rng.randint(1, 999))
        )
        return f"{n:,}" + rng.choice(("", "", "", ".50", ".5", ".25"))
    if r < 0.80:  # suffixes: "2.5k", "3M", "10 k"
        base = rng.choice(("1", "2", "2.5", "5", "10", "15", "50", "100", "1.2", "0.5", "3", "25"))
        return base + rng.choice(("", "", "", "", " ")) + rng.choice(("k", "k", "k", "K", "m", "M"))
    if r < 0.86:  # plain round numbers
        return rng.choice(("1", "2", "10", "20", "100", "1000", "500", "0.1", "0.01", "3"))
    if rng.random() < 0.1:
        return rng.choice(("a hundred", "a thousand", "a dozen"))
    return _number_words(rng.choice(_WORD_NUMBERS), rng)


def _allowance(rng: random.Random) -> str:
    return rng.choice(_UNLIMITED) if rng.random() < 0.3 else _amount(rng)


def _address(rng: random.Random) -> str:
    """An ENS-style name or a random 0x address (lower case, or a valid EIP-55 checksum)."""
    r = rng.random()
    if r < 0.45:
        name = rng.choice(_ENS_NAMES) + rng.choice(_ENS_SUFFIXES)
        return name.capitalize() if rng.random() < 0.25 else name
    hex_address = f"0x{rng.getrandbits(160):040x}"
    return eip55_checksum(hex_address) if r < 0.65 else hex_address


def _chain(rng: random.Random) -> str:
    return rng.choice(CHAINS)


# Every pool: a tuple of raw strings or a function of the random generator.
Pool = tuple[str, ...] | Callable[[random.Random], str]
POOLS: dict[str, Pool] = {
    **TOKEN_POOLS,
    **PROTOCOL_POOLS,
    "amount": _amount,
    "allowance": _allowance,
    "chain": _chain,
    "address": _address,
}

# Slot kind -> (default pool, field used to canonicalise it, group whose values must differ).
_SLOT_KINDS: dict[str, tuple[str, str, str | None]] = {
    "tok": ("trade", "token1", "token"),
    "amt": ("amount", "amount", None),
    "out": ("amount", "amount_out", None),
    "chain": ("chain", "chain", "chain"),
    "dest": ("chain", "dest_chain", "chain"),
    "addr": ("address", "address", "address"),
    "proto": ("lending", "protocol", "protocol"),
}
# How a `{qty}` slot writes its amount: weights of (number, share of balance, all of it), by the
# mode set in Family.pools ("allowance": all of it is "unlimited"/"infinite"/"max").
_QTY_FORMS: dict[str, tuple[float, float, float]] = {
    "any": (0.78, 0.10, 0.12),
    "num": (1.0, 0.0, 0.0),
    "allowance": (0.72, 0.06, 0.22),
}
_QTY_MODES = tuple(_QTY_FORMS)
_HALF_PATTERNS = ("{a} my {t}", "{a} of my {t}", "{a} of the {t}")
_MAX_PATTERNS: dict[str, tuple[str, ...]] = {
    "all": ("{a} my {t}", "{a} of my {t}", "{a} {t}", "{a} the {t}"),
    "max": ("{a} {t}", "the {a} {t}"),
    "entire balance": ("my {a} of {t}", "the {a} of {t}"),
    "whole bag": ("my {a} of {t}",),
    "everything": ("{a} i have in {t}",),
}

# --------------------------------------------------------------------------- template syntax


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Slot:
    name: str
    source: str  # the slot whose value is written (itself, or another for `{amt2=amt}`)


@dataclass(frozen=True)
class _Choice:
    options: tuple[tuple[_Node, ...], ...]


@dataclass(frozen=True)
class _Optional:
    body: tuple[_Node, ...]


_Node = _Text | _Slot | _Choice | _Optional

# Shared paraphrase pieces, referenced as <name>. The empty alternatives keep them optional.
PHRASES: dict[str, str] = {
    "please": "(||||please |pls |can you |could you |i want to |i'd like to |help me |go ahead and "
    "|kindly |i need to |let's |could you please )",
}


def _parse(template: str) -> tuple[_Node, ...]:
    nodes, end = _parse_sequence(template, 0, "")
    if end != len(template):
        raise ValueError(f"unbalanced {template[end]!r} at {end} in template {template!r}")
    return tuple(nodes)


def _parse_sequence(template: str, i: int, stops: str) -> tuple[list[_Node], int]:
    nodes: list[_Node] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            nodes.append(_Text("".join(text)))
            text.clear()

    while i < len(template) and template[i] not in stops:
        char = template[i]
        if char in "{<":
            end = template.index("}" if char == "{" else ">", i)
            body = template[i + 1 : end]
            flush()
            if char == "<":
                nodes.extend(_parse(PHRASES[body]))
            else:
                name, _, source = body.partition("=")
                nodes.append(_Slot(name, source or name))
            i = end + 1
        elif char == "(":
            flush()
            options = []
            while True:
                option, i = _parse_sequence(template, i + 1, "|)")
                options.append(tuple(option))
                if i >= len(template):
                    raise ValueError(f"unclosed '(' in template {template!r}")
                if template[i] == ")":
                    break
            nodes.append(_Choice(tuple(options)))
            i += 1
        elif char == "[":
            flush()
            body_nodes, i = _parse_sequence(template, i + 1, "]")
            if i >= len(template):
                raise ValueError(f"unclosed '[' in template {template!r}")
            nodes.append(_Optional(tuple(body_nodes)))
            i += 1
        elif char in ")]|":
            break  # a closing mark that this level does not expect: reported by the caller
        else:
            text.append(char)
            i += 1
    flush()
    return nodes, i


def _slots(nodes: Iterable[_Node]) -> set[str]:
    """Every slot name a template can render (the parts of `{qty}` included)."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, _Slot):
            names.add(node.name)
            if node.name.startswith("qty"):
                names |= {"amt" + node.name[3:], "tok" + node.name[3:]}
        elif isinstance(node, _Choice):
            for option in node.options:
                names |= _slots(option)
        elif isinstance(node, _Optional):
            names |= _slots(node.body)
    return names


def _slot_kind(name: str) -> str:
    return name.rstrip("0123456789")


# --------------------------------------------------------------------------- families

# Single-intent families bind every field of their action to the slot of the same role.
DEFAULT_BINDINGS: dict[Action, dict[str, str]] = {
    Action.SWAP: {"token1": "tok", "token2": "tok2", "amount": "amt", "amount_out": "out", "chain": "chain"},
    Action.BRIDGE: {
        "token1": "tok",
        "token2": "tok2",
        "amount": "amt",
        "chain": "chain",
        "dest_chain": "dest",
    },
    Action.TRANSFER: {"token1": "tok", "amount": "amt", "address": "addr", "chain": "chain"},
    Action.BALANCE: {"token1": "tok", "address": "addr", "chain": "chain"},
    Action.APPROVE: {
        "token1": "tok",
        "amount": "amt",
        "address": "addr",
        "protocol": "proto",
        "chain": "chain",
    },
    Action.WRAP: {"token1": "tok", "amount": "amt", "chain": "chain"},
    Action.UNWRAP: {"token1": "tok", "amount": "amt", "chain": "chain"},
    Action.TOTAL_SUPPLY: {"token1": "tok", "chain": "chain"},
    **{
        action: {"token1": "tok", "amount": "amt", "protocol": "proto", "chain": "chain"}
        for action in (
            Action.DEPOSIT,
            Action.WITHDRAW,
            Action.BORROW,
            Action.REPAY,
            Action.STAKE,
            Action.UNSTAKE,
        )
    },
}


@dataclass(frozen=True)
class Family:
    """One way of phrasing a request: templates plus the intents they mean.

    `action` is the action of a single-intent family, "multi" for several intents and
    "none" for out-of-scope requests. `intents` binds each intent's fields to slots; a field
    is set exactly when its slot was rendered. `fold_weth` treats ETH and WETH as the same
    token when slots must differ, so that no swap turns ETH into WETH (that is a wrap).
    """

    name: str
    action: str
    kind: Kind
    templates: tuple[str, ...]
    intents: tuple[tuple[Action, Binding], ...] = ()
    pools: Mapping[str, str] = field(default_factory=dict)
    fold_weth: bool = True

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(action for action, _ in self.intents)

    def __hash__(self) -> int:  # the bindings and pools are dicts; the name identifies a family
        return hash(self.name)


def _single(name: str, action: Action, templates: Iterable[str], kind: Kind = "single", **pools: str) -> Family:
    return Family(name, action.value, kind, tuple(templates), ((action, DEFAULT_BINDINGS[action]),), pools)


def _multi(
    name: str,
    intents: Iterable[tuple[Action, Binding]],
    templates: Iterable[str],
    fold_weth: bool = True,
    **pools: str,
) -> Family:
    return Family(name, "multi", "multi", tuple(templates), tuple(intents), pools, fold_weth)


def _out_of_scope(name: str, templates: Iterable[str], **pools: str) -> Family:
    return Family(name, "none", "out_of_scope", tuple(templates), (), pools)


S, B, T, BAL = Action.SWAP, Action.BRIDGE, Action.TRANSFER, Action.BALANCE
_ON = "[ on {chain}]"

_FAMILY_LIST: list[Family] = [
    # ---- swap
    _single("swap_basic", S, (
        "<please>(swap|exchange|convert|trade) {qty} (for|to|into) {tok2}" + _ON,
        "[on {chain}, ](swap|trade|exchange) {qty} (for|to) {tok2}",
        "(swap|convert) {qty} [over ]to {tok2}" + _ON,
        "i want to (swap|exchange) {qty} (for|to) {tok2}" + _ON,
        "(swap|trade) {qty} (for|to) {tok2} (on|using) {chain}",
        "make a swap: {qty} (to|for) {tok2}" + _ON,
        "{qty} (->|to) {tok2}" + _ON,
        "ape into {tok2} with {qty}" + _ON,
        "spend {qty}" + _ON + " buying {tok2}",
    )),
    _single("swap_sell", S, (
        "<please>(sell|dump) {qty} (for|to|into) {tok2}" + _ON,
        "(sell|dump) {qty}" + _ON + " and get {tok2}",
        "(sell|dump|offload) {qty} for some {tok2}",
        "i want to sell {qty} (for|to) {tok2}" + _ON,
        "[on {chain}, ]sell {qty} into {tok2}",
        "cash out {qty} (to|into) {tok2}" + _ON,
    )),
    _single("swap_buy_exact_out", S, (
        "<please>(buy|purchase|get me|grab) {out} {tok2} (with|using) {tok}" + _ON,
        "(buy|purchase) {out} {tok2}" + _ON + " (paying|and pay) with {tok}",
        "i want to buy {out} {tok2} with (my |){tok}" + _ON,
        "(buy|get) {out} {tok2} using {tok} (on|via) {chain}",
        "use {tok} to buy {out} {tok2}" + _ON,
        "(swap|convert) (some |){tok} (for|to|into) (exactly |){out} {tok2}" + _ON,
    )),
    _single("swap_spend", S, (
        "(buy|purchase|get) {tok2} with {qty}" + _ON,
        "(spend|use) {qty} (on|to buy) {tok2}" + _ON,
        "ape {qty} into {tok2}" + _ON,
        "get me some {tok2} for {qty}",
        "[on {chain}, ]buy {tok2} using {qty}",
    )),
    _single("swap_missing", S, (
        "(swap|convert|trade) {tok} (for|to|into) {tok2}" + _ON,
        "(buy|purchase|get) (some |){tok2} with {tok}" + _ON,
        "sell (some |){tok} for {tok2}",
        "i want to swap (some |){tok} to {tok2}",
        "(swap|sell) {qty}" + _ON,
    ), kind="missing"),
    # ---- bridge
    _single("bridge_from_to", B, (
        "<please>(bridge|move|port|send|transfer) {qty} from {chain} to {dest}",
        "bridge {qty} from {chain} [over ]to {dest}",
        "(bridge|move) {qty} to {dest} from {chain}",
        "take {qty} from {chain} (over to|to) {dest}",
        "from {chain} to {dest}: bridge {qty}",
        "i need {qty} moved from {chain} to {dest}",
        "teleport {qty} from {chain} onto {dest}",
        "bring {qty} across from {chain} (to|onto) {dest}",
        "i need {qty} on {dest}, bridge it across from {chain}",
        "get {qty} from {chain} into {dest}",
    )),
    _single("bridge_to", B, (
        "<please>bridge {qty} to {dest}",
        "(get|move|bring) {qty} (onto|over to) {dest}",
        "bridge {qty} (across|over) to {dest}[ from {chain}]",
        "bridge {qty} into {dest}",
        "teleport {qty} to {dest}",
    )),
    _single("bridge_receive_token", B, (
        "bridge {qty} from {chain} to {dest} and (receive|get) {tok2}",
        "bridge {qty} to {dest} and (receive|get) {tok2} there",
        "move {qty} to {dest}, i want {tok2} on arrival",
        "bridge {qty}[ from {chain}] to {dest} as {tok2}",
    )),
    _single("bridge_missing", B, (
        "bridge (my |){tok} to {dest}",
        "move {tok} from {chain} to {dest}",
        "bridge {qty}[ from {chain}]",
        "i want to bridge some {tok} to {dest}",
        "bridge {qty} off {chain}",
    ), kind="missing"),
    # ---- transfer
    _single("transfer_send", T, (
        "<please>(send|transfer) {qty} to {addr}" + _ON,
        "(send|transfer) {addr} {qty}" + _ON,
        "[on {chain}, ](send|transfer) {qty} [over ]to {addr}",
        "i want to send {qty} to {addr}",
        "(send|transfer) {qty} on {chain} to {addr}",
        "to {addr}: (wire|push|move) {qty}" + _ON,
        "{addr} should get {qty}, (shoot|zap|wire) it over" + _ON,
        "fire {qty} off to {addr}" + _ON,
    )),
    _single("transfer_tip", T, (
        "tip {addr} {qty}" + _ON,
        "(give|tip) {qty} to {addr}",
        "give {addr} {qty}" + _ON,
        "send a tip of {qty} to {addr}",
        "drop {addr} {qty} as a tip",
    )),
    _single("transfer_pay", T, (
        "pay {addr} {qty}" + _ON,
        "pay {qty} to {addr}",
        "(reimburse|refund) {addr} {qty}",
        "settle up with {addr}: {qty}",
        "(make|fire off) a payment of {qty} to {addr}" + _ON,
    )),
    _single("transfer_wire", T, (
        "wire {qty} to {addr}" + _ON,
        "(wire|shoot|zap) {addr} {qty}",
        "(shoot|fire off) {qty} to {addr}" + _ON,
        "(move|push) {qty} to {addr}",
    )),
    _single("transfer_missing", T, (
        "(send|transfer) {qty}" + _ON,
        "(send|transfer) {qty} to my friend",
        "(send|transfer) (some |){tok} to {addr}" + _ON,
        "tip {addr} (some |){tok}",
        "pay {addr}" + _ON,
    ), kind="missing"),
    # ---- balance
    _single("balance_question", BAL, (
        "what's my {tok} balance" + _ON + "[?]",
        "what is my {tok} balance" + _ON,
        "check my {tok} balance" + _ON,
        "how much {tok} do i (have|hold)" + _ON + "?",
        "(show|tell) me my {tok} balance" + _ON,
        "[on {chain}, ]how much {tok} have i got?",
        "{tok} balance" + _ON + "?",
        "is there any {tok} left in my wallet" + _ON + "?",
        "(list|show) the tokens in my wallet" + _ON,
        "what {tok} holdings do i have" + _ON + "?",
        "give me all my balances" + _ON,
    )),
    _single("balance_of_address", BAL, (
        "how much {tok} does {addr} (have|hold)" + _ON + "?",
        "check the {tok} balance of {addr}" + _ON,
        "what's the {tok} balance of {addr}" + _ON + "?",
        "(show|get) {addr}'s {tok} balance" + _ON,
        "what does {addr} hold" + _ON + "?",
        "balance of {addr}" + _ON,
    )),
    _single("balance_holdings", BAL, (
        "show [me ]my balances" + _ON,
        "what's in my wallet" + _ON + "?",
        "(do i have|have i got) any {tok}" + _ON + "?",
        "how much {tok} is in my wallet" + _ON + "?",
        "list my tokens" + _ON,
        "what are my holdings" + _ON,
    )),
    # ---- approve
    _single("approve_spender", Action.APPROVE, (
        "<please>approve {proto} to spend {qty}" + _ON,
        "approve {qty} for {proto}" + _ON,
        "(allow|let) {proto} (to spend|spend|use) {qty}" + _ON,
        "approve {proto} for {qty}",
        "[on {chain}, ]approve {qty} to be spent by {proto}",
        "{proto} needs a bigger allowance, (raise|increase) it to {qty}" + _ON,
    ), proto="spender", qty="allowance"),
    _single("approve_address", Action.APPROVE, (
        "approve {addr} to spend {qty}" + _ON,
        "approve {qty} for {addr}",
        "(allow|authorize) {addr} to (spend|use|move) {qty}" + _ON,
        "approve spender {addr} for {qty}",
        "grant {addr} approval for {qty}" + _ON,
        "give {addr} permission to spend {qty}" + _ON,
        "set {addr}'s {tok} allowance to {amt}" + _ON,
    ), qty="allowance", amt="allowance"),
    _single("approve_allowance", Action.APPROVE, (
        "set (an|the|my) {tok} allowance (for|of) {proto} to {amt}",
        "set (an|the) allowance of {qty} for {addr}",
        "give {proto} an allowance of {qty}" + _ON,
        "(increase|raise) the {tok} allowance for {addr} to {amt}",
        "grant {proto} an allowance (for|of) {qty}",
    ), proto="spender", qty="allowance", amt="allowance"),
    _single("approve_missing", Action.APPROVE, (
        "approve {tok} for {proto}" + _ON,
        "approve {proto} to spend (my |){tok}",
        "approve {qty}" + _ON,
        "approve {addr} for {tok}",
    ), kind="missing", proto="spender", qty="allowance"),
    # ---- wrap / unwrap
    _single("wrap_basic", Action.WRAP, (
        "<please>wrap {qty}" + _ON,
        "[on {chain}, ]wrap {qty}",
        "i want to wrap {qty}" + _ON,
        "wrap {amt} of my {tok}" + _ON,
        "wrap {qty} please",
    ), tok="native", qty="num"),
    _single("wrap_convert", Action.WRAP, (
        "(convert|turn|change) {qty} (to|into) (weth|WETH|wrapped eth|wrapped ether)" + _ON,
        "{qty} -> weth" + _ON,
        "wrap up {qty} as weth",
        "make {qty} into weth" + _ON,
    ), tok="eth", qty="num"),
    _single("wrap_to_weth", Action.WRAP, (
        "(make|i need) (weth|wrapped eth|wrapped ether) (from|out of) {qty}" + _ON,
        "[on {chain}, ](turn|convert|change) {qty} into its wrapped (form|version)",
        "{tok} -> weth, amount {amt}" + _ON,
        "get {qty} wrapped up" + _ON,
    ), tok="eth", qty="num"),
    _single("unwrap_basic", Action.UNWRAP, (
        "<please>unwrap {qty}" + _ON,
        "[on {chain}, ]unwrap {qty}",
        "i want to unwrap {qty}",
        "unwrap {qty} [back ]to the native (coin|token)" + _ON,
    ), tok="wrapped"),
    _single("unwrap_convert", Action.UNWRAP, (
        "(convert|turn|change) {qty} [back ](to|into) (eth|ETH|ether|native eth)" + _ON,
        "{qty} -> eth" + _ON,
        "get {qty} back to plain eth",
    ), tok="weth"),
    _single("unwrap_to_eth", Action.UNWRAP, (
        "i (need|want) plain (eth|ether) (from|out of) {qty}" + _ON,
        "[on {chain}, ](turn|convert|change) {qty} back into its unwrapped form",
        "{tok} -> eth, amount {amt}" + _ON,
        "get {qty} unwrapped" + _ON,
    ), tok="weth"),
    # ---- lending
    _single("deposit_basic", Action.DEPOSIT, (
        "<please>deposit {qty} (into|in|to) {proto}" + _ON,
        "put {qty} (into|in) {proto}" + _ON,
        "[on {chain}, ]deposit {qty} (into|to) {proto}",
        "(deposit|put) {qty} (in|on) {proto} {chain}",
        "deposit {qty}" + _ON,
        "(deposit|put) {qty} as collateral (on|in) {proto}",
        "deposit {qty} (in|into) {proto} to earn (yield|interest)" + _ON,
    ), tok="lend"),
    _single("deposit_supply", Action.DEPOSIT, (
        "<please>supply {qty} to {proto}" + _ON,
        "supply {qty} on {proto}" + _ON,
        "(add|provide) {qty} (to|on) {proto} as collateral",
        "supply {qty}" + _ON,
        "[on {chain}, ]supply {qty} (to|into) {proto}",
        "supply {qty} (through|via|using) {proto}" + _ON,
        "supply {qty} to {proto} and lend it out",
    ), tok="lend"),
    _single("deposit_lend", Action.DEPOSIT, (
        "lend {qty} on {proto}" + _ON,
        "lend out {qty}" + _ON,
        "lend {qty} (via|through|with) {proto}",
        "earn (yield|interest) on {qty} (with|in|using) {proto}" + _ON,
        "i want to lend {qty} to {proto}",
    ), tok="lend"),
    _single("deposit_missing", Action.DEPOSIT, (
        "deposit (my |some |){tok} (into|in) {proto}" + _ON,
        "supply {tok} to {proto}",
        "deposit into {proto}" + _ON,
        "lend some {tok}" + _ON,
    ), kind="missing", tok="lend"),
    _single("withdraw_basic", Action.WITHDRAW, (
        "<please>withdraw {qty} from {proto}" + _ON,
        "[on {chain}, ]withdraw {qty} from {proto}",
        "withdraw {qty}" + _ON,
        "withdraw {qty} (out of|from) my {proto} (position|deposit)",
    ), tok="lend"),
    _single("withdraw_redeem", Action.WITHDRAW, (
        "(take out|pull|pull out) {qty} from {proto}" + _ON,
        "redeem {qty} from {proto}",
        "get {qty} out of {proto}" + _ON,
        "remove {qty} from [my ]{proto} (position|deposit)",
    ), tok="lend"),
    _single("withdraw_take_out", Action.WITHDRAW, (
        "from {proto}" + _ON + ", (take out|pull out|redeem|remove) {qty}",
        "(i want|get) {qty} back from {proto}" + _ON,
        "redeem {qty} (on|at) {proto}" + _ON,
    ), tok="lend"),
    _single("withdraw_missing", Action.WITHDRAW, (
        "withdraw (my |){tok} from {proto}" + _ON,
        "withdraw from {proto}" + _ON,
        "withdraw some {tok}",
    ), kind="missing", tok="lend"),
    _single("borrow_basic", Action.BORROW, (
        # <please> without "i need to ": "i need to borrow {qty} from {proto}" is held-out text (borrow_take_loan)
        "(||||please |pls |can you |could you |i want to |i'd like to |help me |go ahead and |kindly |let's "
        "|could you please )borrow {qty} (from|on) {proto}" + _ON,
        "[on {chain}, ]borrow {qty} (from|on|against my collateral on) {proto}",
        "borrow {qty}" + _ON,
        "borrow {qty} against my (eth|collateral)[ on {proto}]",
    ), tok="borrow", qty="num"),
    _single("borrow_take_loan", Action.BORROW, (
        "take out a loan of {qty}[ (from|on) {proto}]",
        "get a loan (of|for) {qty} from {proto}" + _ON,
        "i need to borrow {qty}[ from {proto}]",
        "take a {qty} loan on {proto}",
        "open a {tok} loan of {amt} on {proto}",
    ), tok="borrow", qty="num"),
    _single("borrow_open_loan", Action.BORROW, (
        "(open|take out) a loan on {proto}" + _ON + " for {qty}",
        "i'd like a loan of {qty} (on|at) {proto}" + _ON,
        "get {qty} (as a loan|on credit) from {proto}" + _ON,
        "on {proto}, i need (credit|a loan) for {qty}",
    ), tok="borrow", qty="num"),
    _single("repay_basic", Action.REPAY, (
        "<please>repay {qty} (on|to) {proto}" + _ON,
        "repay {qty}" + _ON,
        "[on {chain}, ]repay {qty} (on|to) {proto}",
        "repay {qty} of [my ]debt on {proto}",
        "repay {qty} of my loan[ on {proto}]",
    ), tok="borrow"),
    _single("repay_pay_back", Action.REPAY, (
        "pay back {qty}[ (to|on) {proto}]",
        "pay off {qty} (of debt |)on {proto}",
        "(settle|clear) {qty} of my {proto} debt",
        "return {qty} i borrowed (from|on) {proto}",
        "pay down {qty} on {proto}" + _ON,
    ), tok="borrow"),
    _single("repay_debt", Action.REPAY, (
        "(clear|settle) my {proto} debt with {qty}" + _ON,
        "my {proto} loan: pay (back|off|down) {qty}" + _ON,
        "i borrowed {amt} {tok} (from|on) {proto}" + _ON + ", (pay it back|pay it off|return it)",
    ), tok="borrow"),
    # ---- staking
    _single("stake_liquid", Action.STAKE, (
        "<please>stake {qty} (with|on|via|using) {proto}" + _ON,
        "[on {chain}, ]stake {qty} (with|on) {proto}",
        "(liquid stake|stake) {qty} (with|through) {proto}",
        "i want to stake {qty} with {proto}",
        "[on {chain}, ]put {qty} to work on {proto}",
        "with {proto}, start staking {qty}",
        "natively stake {qty}" + _ON,
    ), tok="stake", proto="staking"),
    _single("stake_restake", Action.STAKE, (
        "restake {qty} (on|with|via) {proto}" + _ON,
        "restake {qty}",
        "restake {qty} into {proto}",
        "stake {qty} (on|in|into) {proto} (for|to earn) points",
    ), tok="lst", proto="restaking"),
    _single("stake_native", Action.STAKE, (
        "stake {qty}" + _ON,
        "i want to stake {qty}",
        "put {qty} to work (staking|in staking)",
        "start staking {qty}" + _ON,
        "stake {qty} natively",
    ), tok="stake"),
    _single("stake_missing", Action.STAKE, (
        "stake (my |some |){tok} (with|on) {proto}",
        "stake {tok}" + _ON,
        "stake with {proto}",
        "restake (my |){tok} on {proto}",
    ), kind="missing", tok="stake", proto="staking"),
    _single("unstake_basic", Action.UNSTAKE, (
        "<please>unstake {qty}[ from {proto}]" + _ON,
        "unstake {qty} (from|on) {proto}",
        "[on {chain}, ]unstake {qty}",
        "i want to unstake {qty}[ from {proto}]",
    ), tok="unstake", proto="unstaking"),
    _single("unstake_unbond", Action.UNSTAKE, (
        "(unbond|undelegate) {qty}[ from {proto}]",
        "stop staking {qty}[ (on|with) {proto}]",
        "exit {qty} from {proto} staking",
        "(unlock|release) {qty} from staking[ on {proto}]",
        "remove {qty} from my {proto} stake",
    ), tok="unstake", proto="unstaking"),
    _single("unstake_exit", Action.UNSTAKE, (
        "from {proto}" + _ON + ", (unbond|undelegate|unlock|release) {qty}",
        "i want to stop staking: (remove|unlock|exit) {qty}[ from {proto}]",
        "take {qty} out of my stake[ (on|with) {proto}]",
        "exit staking on {proto} with {qty}",
    ), tok="unstake", proto="unstaking"),
    # ---- total supply
    _single("total_supply_question", Action.TOTAL_SUPPLY, (
        "what is the total supply of {tok}" + _ON + "?",
        "what's {tok}'s total supply" + _ON,
        "(get|show|check) the total supply of {tok}" + _ON,
        "total supply of {tok}" + _ON,
        "{tok} total supply" + _ON + "?",
    )),
    _single("total_supply_how_many", Action.TOTAL_SUPPLY, (
        "how many {tok} (tokens |)(exist|are there)" + _ON + "?",
        "how many {tok} have been minted" + _ON + "?",
        "how big is the {tok} supply" + _ON + "?",
        "how much {tok} is in existence" + _ON,
    )),
    _single("total_supply_count", Action.TOTAL_SUPPLY, (
        "{tok}: how many have been minted" + _ON + "?",
        "(total amount|number) of {tok} tokens in existence" + _ON,
        "how big is {tok}'s (total |)supply" + _ON + "?",
        "count all the {tok} that exist" + _ON,
        "[on {chain}, ]how much {tok} exists?",
    )),
    # ---- several intents: context stated once applies to each intent it governs; "it" leaves
    # the amount out and fills the token in from the earlier step.
    _multi("multi_swap_bridge", (
        (S, {"token1": "tok", "token2": "tok2", "amount": "amt", "chain": "chain"}),
        (B, {"token1": "tok2", "chain": "chain", "dest_chain": "dest"}),
    ), (
        "(swap|convert) {qty} (for|to) {tok2}" + _ON + " (and|then|and then) bridge it to {dest}",
        "[on {chain}, ]swap {qty} for {tok2}, then bridge (it|the {tok2}) to {dest}",
        "sell {qty} for {tok2}" + _ON + " and move it to {dest}",
    )),
    _multi("multi_bridge_swap", (
        (B, {"token1": "tok", "amount": "amt", "chain": "chain", "dest_chain": "dest"}),
        (S, {"token1": "tok", "token2": "tok2", "chain": "dest2"}),
    ), (
        "bridge {qty} from {chain} to {dest} and (swap|convert) it (for|to) {tok2} on {dest2=dest}",
        "bridge {qty} to {dest}, then swap it for {tok2} on {dest2=dest}",
        "move {qty}[ from {chain}] to {dest} and (swap|trade) it (for|into) {tok2} (on|over on) {dest2=dest}",
    )),
    _multi("multi_supply_borrow", (
        (Action.DEPOSIT, {"token1": "tok", "amount": "amt", "protocol": "proto", "chain": "chain"}),
        (Action.BORROW, {"token1": "tok2", "amount": "amt2", "protocol": "proto", "chain": "chain"}),
    ), (
        "(supply|deposit) {qty} (to|into|on) {proto}" + _ON + " and borrow {qty2}",
        "[on {chain}, ](deposit|supply) {qty} (into|to) {proto}, then borrow {qty2}",
        "use {qty} as collateral on {proto} and borrow {qty2}" + _ON,
    ), tok="lend", tok2="borrow", qty2="num"),
    _multi("multi_withdraw_transfer", (
        (Action.WITHDRAW, {"token1": "tok", "amount": "amt", "protocol": "proto", "chain": "chain"}),
        (T, {"token1": "tok", "address": "addr", "chain": "chain"}),
    ), (
        "withdraw {qty} from {proto}" + _ON + " and (send|transfer) it to {addr}",
        "pull {qty} out of {proto} then send it to {addr}",
        "withdraw {qty} from {proto} and pay {addr} with it",
    ), tok="lend"),
    _multi("multi_swap_send", (
        (S, {"token1": "tok", "token2": "tok2", "amount": "amt", "chain": "chain"}),
        (T, {"token1": "tok2", "address": "addr", "chain": "chain"}),
    ), (
        "(swap|convert) {qty} (for|to|into) {tok2}" + _ON + " and (send|transfer) (it|them) to {addr}",
        "[on {chain}, ]swap {qty} for {tok2} then send the {tok2} to {addr}",
        "buy {tok2} with {qty} and send it to {addr}",
    )),
    _multi("multi_wrap_deposit", (
        (Action.WRAP, {"token1": "tok", "amount": "amt", "chain": "chain"}),
        (Action.DEPOSIT, {"token1": "tok2", "amount": "amt2", "protocol": "proto", "chain": "chain"}),
    ), (
        "wrap {amt} {tok}" + _ON + " and (deposit|supply) {amt2=amt} {tok2} (into|to) {proto}",
        "wrap {amt} {tok}" + _ON + " and (deposit|supply) the {tok2} (into|to) {proto}",
        "[on {chain}, ]wrap {amt} {tok}, then put the {tok2} in {proto}",
    ), fold_weth=False, tok="eth", tok2="weth"),
    _multi("multi_three_step", (
        (S, {"token1": "tok", "token2": "tok2", "amount": "amt", "chain": "chain"}),
        (B, {"token1": "tok2", "chain": "chain", "dest_chain": "dest"}),
        (Action.DEPOSIT, {"token1": "tok2", "protocol": "proto", "chain": "dest2"}),
    ), (
        "[on {chain}: ]swap {qty} for {tok2}, bridge it to {dest} and (deposit|supply) it (into|to) {proto}"
        " on {dest2=dest}",
        "swap {qty} to {tok2}" + _ON + ", then bridge the {tok2} to {dest} and lend it on {proto}"
        " on {dest2=dest}",
    ), tok2="stable"),
    _multi("multi_withdraw_swap_send", (
        (Action.WITHDRAW, {"token1": "tok", "amount": "amt", "protocol": "proto", "chain": "chain"}),
        (S, {"token1": "tok", "token2": "tok2", "chain": "chain"}),
        (T, {"token1": "tok2", "address": "addr", "chain": "chain"}),
    ), (
        "withdraw {qty} from {proto}" + _ON + ", (swap|convert) it (for|to) {tok2} and send it to {addr}",
        "take {qty} out of {proto}, swap it to {tok2}, then send it to {addr}",
    ), tok="lend"),
    _multi("multi_stake_restake", (
        (Action.STAKE, {"token1": "tok", "amount": "amt", "protocol": "proto", "chain": "chain"}),
        (Action.STAKE, {"token1": "tok2", "protocol": "proto2", "chain": "chain"}),
    ), (
        "stake {qty} with {proto}" + _ON + " and restake the {tok2} on {proto2}",
        "stake {qty} (with|on) {proto}, then restake [the ]{tok2} (on|with|via) {proto2}",
    ), tok="eth", proto="staking", tok2="lst", proto2="restaking"),
    _multi("multi_two_transfers", (
        (T, {"token1": "tok", "amount": "amt", "address": "addr", "chain": "chain"}),
        (T, {"token1": ("tok2", "tok"), "amount": "amt2", "address": "addr2", "chain": "chain"}),
    ), (
        "send {qty} to {addr} and {qty2} to {addr2}" + _ON,
        "(tip|pay) {addr} {qty} and {addr2} {qty2}",
        "send {qty} to {addr} and {amt2} to {addr2}" + _ON,
        "(send|transfer) {addr} {qty}, and send {addr2} {qty2}",
    ), qty="num", qty2="num"),
    _multi("multi_repay_withdraw", (
        (Action.REPAY, {"token1": "tok", "amount": "amt", "protocol": "proto", "chain": "chain"}),
        (Action.WITHDRAW, {"token1": "tok2", "amount": "amt2", "protocol": "proto", "chain": "chain"}),
    ), (
        "repay {qty} (on|to) {proto}" + _ON + " (then|and) withdraw {qty2}",
        "[on {chain}, ]repay {qty} on {proto}, then withdraw {qty2}",
        "[on {chain}, ]repay {qty} on {proto} and pull out {qty2}",
    ), tok="borrow", tok2="lend"),
    _multi("multi_approve_deposit", (
        (Action.APPROVE, {"token1": "tok", "amount": "amt", "protocol": "proto", "chain": "chain"}),
        (Action.DEPOSIT, {"token1": "tok", "amount": "amt2", "protocol": "proto", "chain": "chain"}),
    ), (
        "approve {proto} to spend {amt} {tok}" + _ON
        + " and (deposit|supply) {amt2=amt} {tok} (into|to) {proto}",
        "approve {proto} for {amt} {tok}" + _ON + " and deposit it",
        "[on {chain}, ]approve {amt} {tok} for {proto}, then deposit {amt2=amt} {tok}",
    ), tok="lend"),
    _multi("multi_unstake_swap", (
        (Action.UNSTAKE, {"token1": "tok", "amount": "amt", "protocol": "proto", "chain": "chain"}),
        (S, {"token1": "tok", "token2": "tok2", "chain": "chain"}),
    ), (
        "unstake {qty} from {proto}" + _ON + " and (swap|sell) it (for|to|into) {tok2}",
        "unstake {qty}, then swap it to {tok2}",
    ), tok="lst", proto="unstaking"),
    _multi("multi_balance_send", (
        (BAL, {"token1": "tok", "chain": "chain"}),
        (T, {"token1": "tok", "amount": "amt2", "address": "addr", "chain": "chain"}),
    ), (
        "check my {tok} balance" + _ON + " and (send|transfer) {amt2} {tok} to {addr}",
        "how much {tok} do i have? then send {amt2} {tok} to {addr}",
    )),
    # ---- out of scope: questions, small talk, opinions; several mention actions on purpose.
    _out_of_scope("oos_price", (
        "what's the price of {tok}" + _ON + "?",
        "how much is {tok} worth( today| right now|)?",
        "is {tok} going to (pump|dump|moon)?",
        "should i (buy|sell) {tok}?",
        "{tok} to the moon",
        "will {tok} hit {amt}?",
        "what's the {tok} market cap",
    )),
    _out_of_scope("oos_explain", (
        "what is (a rollup|restaking|liquid staking|a bridge|impermanent loss|an ens name|gas|slippage"
        "|a stablecoin|wrapped ether|an allowance|a flash loan|mev)?",
        "explain (impermanent loss|restaking|how lending works|account abstraction)[ like i'm five]",
        "how does (bridging|staking|lending on {proto}|{proto}|a dex|an approval) work?",
        "what's the difference between {tok} and {tok2}?",
        "why do i need to approve tokens?",
    )),
    _out_of_scope("oos_smalltalk", (
        "(gm|gn|hello|hi|hey there|yo)(|!| fren| ser)",
        "(thanks|thank you|cheers|ty)(|!| a lot| so much)",
        "who (are you|made you|built you)?",
        "tell me a (joke|fun fact)[ about crypto]",
        "how are you( doing|) today?",
        "what can you do?",
        "(nice|cool|great|awesome)(|!|, thanks)",
    )),
    _out_of_scope("oos_howto", (
        "how do i (swap|bridge|stake|wrap|unwrap|deposit|borrow|send) {tok}" + _ON + "?",
        "what's the best (apy|yield|rate) for {tok}" + _ON + "?",
        "is {proto} safe[ to use]?",
        "what are gas fees like on {chain}[ right now]?",
        "which chains does {proto} support?",
        "how long does it take to bridge from {chain} to {dest}?",
        "what happens if i get liquidated on {proto}?",
    )),
    _out_of_scope("oos_sentiment", (
        "(bullish|bearish) on {tok}( this week| rn|)? what do you think",
        "{tok} (keeps|is) (pumping|dumping), should i worry?",
        "how come {tok} (went|keeps going) (up|down)( so fast|)?",
        "{tok} looking (weak|bullish|strong) to me",
        "(lost|made) (some |so much |)money trading {tok} (today|this week)",
        "when's a good time to get into {tok}?",
        "is {chain} (cheaper|better) than {dest} for gas?",
    )),
    _out_of_scope("oos_market_chat", (
        "{tok} is (pumping|dumping|looking bullish|looking weak) (today|rn|this week)",
        "what do you think about {tok}?",
        "is it a good time to buy {tok}?",
        "(why|how come) is {tok} (down|up) (today|so much)?",
        "i lost money on {tok} 😭",
        "which is better, {proto} or {proto2}?",
        "{chain} or {dest}, which is cheaper?",
    )),
]  # fmt: skip

FAMILIES: dict[str, Family] = {family.name: family for family in _FAMILY_LIST}

# One family per action, one multi-intent and one out-of-scope family: their phrasings are
# never trained on, so the test split measures generalisation (every action keeps others).
HELD_OUT_FAMILIES: frozenset[str] = frozenset(
    {
        "swap_spend", "bridge_to", "transfer_wire", "balance_holdings", "approve_allowance",
        "wrap_convert", "unwrap_convert", "deposit_lend", "withdraw_redeem", "borrow_take_loan",
        "repay_pay_back", "stake_native", "unstake_unbond", "total_supply_how_many",
        "multi_withdraw_transfer", "oos_market_chat",
    }
)  # fmt: skip
TRAINING_FAMILIES: frozenset[str] = frozenset(FAMILIES) - HELD_OUT_FAMILIES


def _check_family(family: Family) -> tuple[tuple[_Node, ...], ...]:
    """Parse a family's templates and check its bindings, so a typo fails at import."""
    parsed = tuple(_parse(t) for t in family.templates)
    rendered = set().union(*(_slots(p) for p in parsed))
    for name in rendered:
        if _slot_kind(name) not in (*_SLOT_KINDS, "qty"):
            raise ValueError(f"family {family.name}: unknown slot kind in {{{name}}}")
    for slot, pool in family.pools.items():
        if pool not in (POOLS if not slot.startswith("qty") else _QTY_MODES):
            raise ValueError(f"family {family.name}: unknown pool {pool!r} for {slot}")
    bound: set[str] = set()
    for action, binding in family.intents:
        for name, slots in binding.items():
            if name not in ALLOWED_FIELDS[action]:
                raise ValueError(f"family {family.name}: {name} is not a field of {action}")
            alternatives = (slots,) if isinstance(slots, str) else slots
            bound.update(alternatives)
            if family.kind == "multi" and not rendered.intersection(alternatives):
                raise ValueError(f"family {family.name}: {name} is bound to {slots}, never rendered")
    unlabelled = {s for s in rendered if not s.startswith("qty")} - bound
    if family.kind != "out_of_scope" and unlabelled:  # a value in the request that no label reflects
        raise ValueError(f"family {family.name}: slots {sorted(unlabelled)} are not bound to any field")
    return parsed


_PARSED: dict[str, tuple[tuple[_Node, ...], ...]] = {f.name: _check_family(f) for f in _FAMILY_LIST}

# --------------------------------------------------------------------------- rendering


class _Retry(Exception):
    """This draw could not satisfy the constraints (e.g. two different tokens); try again."""


@dataclass
class _Render:
    """The state of one example while its template is rendered."""

    family: Family
    rng: random.Random
    canonical: Callable[[str, str], str]
    values: dict[str, str] = field(default_factory=dict)  # slot -> raw text before noise
    used: dict[str, set[str]] = field(default_factory=dict)  # distinctness group -> canonical values
    qty_parts: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    segments: list[tuple[str, str | None]] = field(default_factory=list)  # (text, slot or None)

    def render(self, nodes: Iterable[_Node]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.segments.append((node.text, None))
            elif isinstance(node, _Choice):
                self.render(self.rng.choice(node.options))
            elif isinstance(node, _Optional):
                if self.rng.random() < 0.5:
                    self.render(node.body)
            elif node.name.startswith("qty"):
                self.segments.extend(self.quantity(node.name))
            else:
                text = self.value(node.source)
                self.values[node.name] = text
                self.segments.append((text, node.name))

    def value(self, name: str) -> str:
        """The raw text of a slot, drawn on first use so that only rendered slots exist."""
        if name in self.values:
            return self.values[name]
        kind = _slot_kind(name)
        default_pool, field_name, group = _SLOT_KINDS[kind]
        pool = POOLS[self.family.pools.get(name, default_pool)]
        for _ in range(40):
            text = pool(self.rng) if callable(pool) else self.rng.choice(pool)
            if group is None:
                break
            key = self.canonical(field_name, text).lower()
            if group == "token" and self.family.fold_weth and key == "weth":
                key = "eth"  # no ETH <-> WETH swaps: that is a wrap, not a swap
            if key not in self.used.setdefault(group, set()):
                self.used[group].add(key)
                break
        else:
            raise _Retry
        self.values[name] = text
        return text

    def quantity(self, name: str) -> list[tuple[str, str | None]]:
        """An amount with its token: "2.5k usdc", "100usdc", "half my eth", "all of my dai"."""
        if name in self.qty_parts:
            return self.qty_parts[name]
        suffix = name[3:]
        amount_slot, token_slot = "amt" + suffix, "tok" + suffix
        token = self.value(token_slot)
        form = "number"
        if amount_slot not in self.values:
            weights = _QTY_FORMS[self.family.pools.get(name, "any")]
            form = self.rng.choices(("number", "share", "all"), weights=weights)[0]
        if form == "number":
            amount = self.value(amount_slot)
            glue = " "
            if (
                re.fullmatch(r"\d+(?:\.\d+)?", amount)
                and re.fullmatch(r"[A-Za-z]\w*", token)
                and self.rng.random() < 0.06
            ):
                glue = ""  # "100usdc": people skip the space, and tokenisers split it differently
            parts = [(amount, amount_slot), (glue, None), (token, token_slot)]
        else:
            if form == "share":
                amount = self.rng.choice(_SHARES)
                patterns = _HALF_PATTERNS if amount == "half" else ("{a} of my {t}",)
            elif self.family.pools.get(name) == "allowance":
                amount, patterns = self.rng.choice(_UNLIMITED), ("{a} {t}",)
            else:
                amount = self.rng.choice(_MAXES)
                patterns = _MAX_PATTERNS[amount]
            self.values[amount_slot] = amount
            parts = self._pattern(self.rng.choice(patterns), amount_slot, token_slot)
        self.qty_parts[name] = parts
        return parts

    def _pattern(self, pattern: str, amount_slot: str, token_slot: str) -> list[tuple[str, str | None]]:
        parts: list[tuple[str, str | None]] = []
        for piece in re.split(r"(\{[at]\})", pattern):
            if piece == "{a}":
                parts.append((self.values[amount_slot], amount_slot))
            elif piece == "{t}":
                parts.append((self.values[token_slot], token_slot))
            elif piece:
                parts.append((piece, None))
        return parts


def _tidy(segments: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Merge adjacent text, collapse the spaces left by optional parts, strip the ends."""
    merged: list[tuple[str, str | None]] = []
    for text, slot in segments:
        if slot is None and merged and merged[-1][1] is None:
            merged[-1] = (merged[-1][0] + text, None)
        elif text:
            merged.append((text, slot))
    tidy = []
    for text, slot in merged:
        if slot is None:
            text = re.sub(r" {2,}", " ", text)
            text = re.sub(r" ([,?!:])", r"\1", text)
        tidy.append((text, slot))
    if tidy and tidy[0][1] is None:
        tidy[0] = (tidy[0][0].lstrip(" ,"), None)
    if tidy and tidy[-1][1] is None:
        tidy[-1] = (tidy[-1][0].rstrip(), None)
    return [s for s in tidy if s[0]]


# --------------------------------------------------------------------------- noise

# Typos only ever hit these words: verbs and fillers, never prepositions ("to", "from") or values.
_TYPO_WORDS = frozenset(
    (
        "swap", "exchange", "convert", "trade", "sell", "dump", "buy", "purchase", "bridge", "move",
        "port", "send", "transfer", "tip", "pay", "wire", "give", "approve", "allow", "authorize",
        "wrap", "unwrap", "deposit", "supply", "lend", "withdraw", "redeem", "borrow", "repay",
        "stake", "restake", "unstake", "check", "show", "please", "thanks", "quickly", "could",
        "would", "want", "need",
    )
)  # fmt: skip
_FILLER_PREFIXES = ("hey ", "hi, ", "yo ", "pls ", "please ", "ok so ", "gm, ", "hey, quickly ", "um ")
_FILLER_SUFFIXES = (
    " pls",
    " please",
    " thanks!",
    " thx",
    " asap",
    " quickly",
    " ty",
    "!",
    " thanks",
    ", thank you",
)
_EMOJIS = ("🚀", "🙏", "💸", "🔥", "✅", "👀", "😅", "🤝", "💰", "⚡")
_HEX = re.compile(r"0x[0-9a-fA-F]{40}")


def _typo(word: str, rng: random.Random) -> str:
    # Keep the first letter (and the "un"/"re" of unwrap/restake): people rarely miss those, and
    # "uwrap" or "estake" would make the action itself ambiguous.
    start = 2 if word.lower().startswith(("un", "re")) else 1
    i = rng.randrange(start, len(word) - 1)
    op = rng.randrange(3)
    if op == 0:  # swap two neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:  # drop a letter
        return word[:i] + word[i + 1 :]
    return word[: i + 1] + word[i] + word[i + 1 :]  # double a letter


def _add_typo(segments: list[tuple[str, str | None]], rng: random.Random) -> list[tuple[str, str | None]]:
    spots = [
        (index, match)
        for index, (text, slot) in enumerate(segments)
        if slot is None
        for match in re.finditer(r"[A-Za-z]+", text)
        if match.group().lower() in _TYPO_WORDS and len(match.group()) >= 4
    ]
    if not spots:
        return segments
    index, match = rng.choice(spots)
    typo = _typo(match.group(), rng)
    if typo.lower() == match.group().lower() or typo.lower() in _TYPO_WORDS:
        return segments  # no change ("ll" doubled back), or another verb: that would change the meaning
    text = segments[index][0]
    segments = list(segments)
    segments[index] = (text[: match.start()] + typo + text[match.end() :], None)
    return segments


def _change_case(segments: list[tuple[str, str | None]], rng: random.Random) -> list[tuple[str, str | None]]:
    """Lower, upper or sentence case of the whole prompt; 0x addresses keep their case."""
    style = rng.choices(("lower", "upper", "sentence"), weights=(0.45, 0.2, 0.35))[0]
    out = []
    for text, slot in segments:
        if slot is not None and _HEX.fullmatch(text):
            out.append((text, slot))
        else:
            out.append((text.upper() if style == "upper" else text.lower(), slot))
    if style == "sentence":
        for index, (text, slot) in enumerate(out):
            if slot is not None and _HEX.fullmatch(text):
                break  # never capitalise the "0x" of an address
            if any(c.isalpha() for c in text):
                position = next(i for i, c in enumerate(text) if c.isalpha())
                out[index] = (text[:position] + text[position].upper() + text[position + 1 :], slot)
                break
    return out


def _add_noise(
    segments: list[tuple[str, str | None]], rng: random.Random, fillers: bool = True
) -> list[tuple[str, str | None]]:
    segments = list(segments)
    if rng.random() < 0.2 and fillers:  # no "pls"/"asap" on questions and small talk
        if rng.random() < 0.6:
            segments.insert(0, (rng.choice(_FILLER_PREFIXES), None))
        else:
            segments.append((rng.choice(_FILLER_SUFFIXES), None))
    if rng.random() < 0.08:
        emoji = rng.choice(_EMOJIS)
        if rng.random() < 0.5:
            segments.insert(0, (emoji + " ", None))
        else:
            segments.append((" " + emoji, None))
    if rng.random() < 0.12:
        segments = _add_typo(segments, rng)
    if rng.random() < 0.06:
        spaces = [(i, m.start()) for i, (t, s) in enumerate(segments) if s is None for m in re.finditer(" ", t)]
        if spaces:
            index, position = rng.choice(spaces)
            text = segments[index][0]
            segments[index] = (text[:position] + "  " + text[position + 1 :], None)
    if rng.random() < 0.3:
        segments = _change_case(segments, rng)
    return segments


# --------------------------------------------------------------------------- generation


def _dedup_key(prompt: str) -> str:
    """Same as brianft.data.io.normalized_prompt: case and spacing do not make a new request."""
    return " ".join(prompt.lower().split())


@cache
def _default_canonicalizer() -> Canonicalizer:
    return Canonicalizer.default()


@dataclass(frozen=True)
class _Draft:
    prompt: str
    intents: list[Intent]
    raw: list[dict[str, str]]


def _draft(family: Family, rng: random.Random, canonical: Callable[[str, str], str]) -> _Draft:
    """One rendered, noised and labelled request of `family` (raises _Retry on a bad draw)."""
    state = _Render(family, rng, canonical)
    state.render(rng.choice(_PARSED[family.name]))
    segments = _add_noise(_tidy(state.segments), rng, fillers=family.kind != "out_of_scope")
    prompt = "".join(text for text, _ in segments)
    written: dict[str, str] = {}
    for text, slot in segments:
        if slot is not None:
            written.setdefault(slot, text)  # the first mention is the raw value
    intents, raws = [], []
    for action, binding in family.intents:
        labels: dict[str, str] = {}
        raw: dict[str, str] = {}
        for field_name, slots in binding.items():
            slot = next((s for s in ((slots,) if isinstance(slots, str) else slots) if s in written), None)
            if slot is None:
                continue  # not stated in this request: left out, never guessed
            label = canonical(field_name, state.values[slot])
            if canonical(field_name, written[slot]) != label:
                raise RuntimeError(f"noise changed the value of {slot} in {prompt!r}")  # a bug, not bad luck
            labels[field_name], raw[field_name] = label, written[slot]
        intents.append(Intent(action=action, **labels))
        raws.append({name: raw[name] for name in FIELDS if name in raw})  # schema order, like the intent
    return _Draft(prompt, intents, raws)


def _new_draft(
    family: Family, rng: random.Random, canonical: Callable[[str, str], str], seen: set[str], tries: int = 8
) -> _Draft | None:
    """A draft of `family` whose prompt is new, or None. Retrying the same family (rather than
    picking another) keeps the kind shares on target when a small family starts repeating."""
    for _ in range(tries):
        try:
            draft = _draft(family, rng, canonical)
        except _Retry:
            continue
        if _dedup_key(draft.prompt) not in seen:
            return draft
    return None


def _pick_family(by_kind: dict[str, list[Family]], rng: random.Random) -> Family:
    kinds = [k for k in KIND_WEIGHTS if by_kind.get(k)]
    kind = rng.choices(kinds, weights=[KIND_WEIGHTS[k] for k in kinds])[0]
    return rng.choice(by_kind[kind])


def generate_examples(
    n: int,
    seed: int,
    *,
    exclude_prompts: Iterable[str] = (),
    families: Iterable[str] | None = None,
    canonicalizer: Canonicalizer | None = None,
) -> list[Example]:
    """`n` unique labelled requests, the same for the same arguments.

    Families are drawn by kind (single ~72%, multi ~12%, out-of-scope ~8%, missing fields
    ~8%, renormalised over the kinds present in `families`; default: all families,
    held-out ones included), then uniformly within a kind. Prompts that equal one in
    `exclude_prompts` or an earlier one (case and spacing ignored) are drawn again; a family
    that keeps repeating itself is retired. Raises ValueError when `n` unique requests
    cannot be made from the chosen families.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    names = list(FAMILIES) if families is None else list(dict.fromkeys(families))
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown template families: {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
    if not names and n:
        raise ValueError("no template families to generate from")
    canonicalizer = canonicalizer or _default_canonicalizer()
    memo: dict[tuple[str, str], str] = {}

    def canonical(field_name: str, raw: str) -> str:
        key = (field_name, raw)
        if key not in memo:
            memo[key] = canonicalizer.value(field_name, raw)
        return memo[key]

    rng = random.Random(seed)
    seen = {_dedup_key(p) for p in exclude_prompts}
    by_kind: dict[str, list[Family]] = {}
    for name in names:
        by_kind.setdefault(FAMILIES[name].kind, []).append(FAMILIES[name])
    repeats: dict[str, int] = dict.fromkeys(names, 0)
    max_repeats = 40  # consecutive failed picks (of 8 drafts each) after which a family is exhausted
    examples: list[Example] = []
    while len(examples) < n:
        if not any(by_kind.values()):
            raise ValueError(
                f"could only generate {len(examples)} of {n} unique examples from families "
                f"{', '.join(names)}: ask for fewer or use more families"
            )
        family = _pick_family(by_kind, rng)
        draft = _new_draft(family, rng, canonical, seen)
        if draft is None:  # a family that keeps repeating itself has run out of requests: retire it
            repeats[family.name] += 1
            if repeats[family.name] >= max_repeats:
                by_kind[family.kind].remove(family)
            continue
        repeats[family.name] = 0
        seen.add(_dedup_key(draft.prompt))
        examples.append(
            Example(
                prompt=draft.prompt,
                intents=draft.intents,
                raw=draft.raw,
                source="synthetic",
                family=family.name,
            )
        )
    return examples
