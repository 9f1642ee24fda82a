"""A deterministic, rule-based intent extractor: the baseline a fine-tuned model must beat,
and a fallback that needs no model.

It answers in the model's own target format (`brianft.target`): it finds the actions and
copies every value *as written* in the request ("swap; token1=eth; amount=2.5k"), and the
same decoder as for model output canonicalises it. Every value is a span of the request
that the canonicaliser accepts (for "it", the span an earlier step used), so the rules can
miss a value but never invent one.

How a request is read:

1. words with their offsets; punctuation at a word's edge is dropped, but ",", ";", ":" and
   sentence ends still end a clause; an amount glued to its ticker ("100link") is two words;
2. clauses: split on "and" / "then" / "&" and that punctuation (never inside a number such
   as "one hundred and fifty");
3. per clause, the action: a total-supply question, an action verb at the start of the
   clause (after "pls", "can you", "i want to", ...), or a balance question. A clause
   without one either completes the previous step ("... and receive eth"), continues it
   ("send 1 eth to a.eth and 2 dai to b.eth"), only names chains ("on base: ..."), or is
   out of scope;
4. per clause, mentions (amount, address, chain, protocol, token), each with the word that
   introduces it ("on", "from", "to", "for", "with", an amount, the verb), which decides
   its role: "on base" is a chain, "to base" a destination only for a bridge;
5. across clauses, context: a chain, or a lending protocol, stated once carries forward,
   and a step without a token of its own takes the previous step's output token ("swap 100
   dai for usdc and send it to bob.eth"); its amount is left out, as the schema says.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from rapidfuzz.distance import DamerauLevenshtein

from brianft.data.spans import WORD
from brianft.infer import Prediction, decode_prediction
from brianft.normalize import Canonicalizer, NormalizationError, canonical_address, canonical_amount
from brianft.schema import ALLOWED_FIELDS, Action
from brianft.target import NO_INTENT, TargetFormat, render_target, writable

# --------------------------------------------------------------------------- lexicons

# Action verbs by verb class. Classes such as "send", "pay" or "get" are resolved with the rest
# of the clause (see _classify). Typos are matched by _slip, so only odd ones are listed.
_VERBS: dict[str, str] = {
    **dict.fromkeys(("swap", "swpa", "trade", "exchange", "sell", "dump", "flip", "offload", "cash"), "swap"),
    **dict.fromkeys(("convert", "change", "turn"), "convert"),
    **dict.fromkeys(("buy", "purchase", "acquire"), "buy"),
    **dict.fromkeys(("get", "grab"), "get"),
    **dict.fromkeys(("bridge", "port", "teleport", "bring"), "bridge"),
    **dict.fromkeys(
        ("send", "snd", "transfer", "move", "wire", "tip", "shoot", "forward", "gift", "drop", "refund", "reimburse"),
        "send",
    ),
    **dict.fromkeys(("fire", "zap", "push"), "send"),  # "fire 5 dai off to bob.eth", "zap it over"
    **dict.fromkeys(("approve", "allow", "authorize", "authorise", "grant", "let"), "approve"),
    **dict.fromkeys(("wrap", "wrp"), "wrap"),
    "unwrap": "unwrap",
    **dict.fromkeys(("deposit", "supply", "lend", "put", "add", "provide"), "deposit"),
    **dict.fromkeys(("withdraw", "remove", "redeem", "pull"), "withdraw"),
    "borrow": "borrow",
    **dict.fromkeys(("repay", "clear"), "repay"),
    **dict.fromkeys(("stake", "restake"), "stake"),
    **dict.fromkeys(("unstake", "unbond", "undelegate", "unlock", "exit", "release"), "unstake"),
    # resolved with the next words: "pay back", "give ... approval", "take a loan", "make a swap",
    # "start staking", "open a loan", "ape into", "spend 5 dai buying", "raise the allowance" ...
    **{
        verb: verb
        for verb in ("pay", "give", "take", "set", "settle", "use", "make", "start", "stop", "open", "ape", "spend")
    },
    **dict.fromkeys(("raise", "increase"), "raise"),
    **dict.fromkeys(("reduce", "shrink", "decrease", "lower", "service"), "reduce"),  # "reduce my aave loan by 5 dai"
    "fund": "deposit",  # "fund my aave position with 0.4 weth"
    "delegate": "stake",  # "delegate 1,000 grt"
    "return": "return",  # a repayment, or a transfer to an address: see _classify
    "earn": "earn",  # "earn interest on 2 weth in compound", "earn staking yield on 10 eth via lido"
}
# Long, distinctive verbs also match at any one edit ("widthdraw", "brige", "trasnfer").
_LONG_VERBS = (
    "bridge",
    "transfer",
    "approve",
    "deposit",
    "withdraw",
    "borrow",
    "repay",
    "restake",
    "unstake",
    "unwrap",
)
# Everyday verbs ("take care", "get lost", "turn off notifications") are an action only with
# some wallet evidence in the clause: an amount, address, chain, protocol or a known-looking token.
_WEAK_VERBS = frozenset(
    {
        "drop", "turn", "change", "add", "let", "take", "get", "grab", "give", "pay", "set", "move", "put",
        "use", "make", "settle", "pull", "remove", "shoot", "forward", "gift", "cash", "port", "flip", "dump",
        "allow", "grant", "provide", "offload", "refund", "fire", "push", "bring", "clear", "release", "exit",
        "unlock", "open", "start", "stop", "spend", "raise", "increase", "return", "earn",
        "reduce", "shrink", "decrease", "lower", "service", "fund", "delegate",
    }
)  # fmt: skip
# After a verb, these make it a noun: "swap is cheaper on uniswap?", "bridge fees are high", "sell or hold?"
_NOUN_USE = frozenset({"is", "are", "was", "were", "or", "fees", "fee", "rates", "works", "work", "means", "mean"})
# "make a swap: ...", "make a payment of 8 dai to sam.eth"
_VERB_NOUNS = {
    "swap": "swap", "trade": "swap", "payment": "send", "transfer": "send", "tip": "send",
    "deposit": "deposit", "withdrawal": "withdraw", "bridge": "bridge", "purchase": "buy",
}  # fmt: skip
# "i need 5 brett moved from polygon to base": a participle after "need" / "want".
_PARTICIPLES = {"moved": "send", "sent": "send", "transferred": "send", "bridged": "bridge", "swapped": "swap"}

# Words that may come before the verb of a command: politeness, hesitation, "can you", "i want to".
_PREFIX_WORDS = frozenset(
    {
        "pls", "please", "plz", "kindly", "hey", "yo", "hi", "hello", "ok", "okay", "so", "just", "now",
        "also", "and", "then", "can", "could", "would", "you", "u", "ya", "i", "i'd", "id", "i'm", "im",
        "we", "want", "wanna", "like", "to", "need", "let's", "lets", "liquid", "quickly", "ser", "help",
        "me", "go", "ahead", "try", "um", "uh", "hmm", "erm", "ah", "oh", "gm", "gn", "lol", "natively",
    }
)  # fmt: skip

# Prepositions and what they announce ("out of" reads as "from", see _cue).
_CUES = {
    "on": "on", "in": "on", "at": "on", "inside": "on",
    "to": "to", "into": "to", "onto": "to", "->": "to", "→": "to", "towards": "to", "toward": "to",
    "from": "from", "off": "from", "for": "for", "of": "of", "against": "against", "as": "as",
    "with": "with", "w/": "with", "using": "with", "via": "with", "through": "with", "thru": "with", "by": "with",
}  # fmt: skip
# Words skipped between a preposition and what it introduces ("to my yearn vault", "over to base").
_FILLERS = frozenset({"the", "my", "your", "our", "some", "me", "over", "back", "out", "exactly", "just", "any"})
# Words allowed between an amount and its token ("half of my eth"); "everything i have in usdt" too.
_AMOUNT_TOKEN_FILLERS = frozenset({"of", "my", "the", "your", "our"})
# An amount span never starts or ends with these ("half", not "half of my").
_AMOUNT_EDGE_WORDS = frozenset({"of", "my", "the", "it", "them", "your", "our", "in", "to", "on", "i", "and"})

# Words that are never a token (verbs, prefixes, cues and fillers are added, and typos of all).
_NOT_TOKENS = frozenset(
    {
        "a", "an", "it", "its", "them", "they", "that", "this", "these", "those", "there", "here", "is", "are",
        "was", "be", "am", "been", "do", "does", "did", "have", "has", "had", "got", "and", "or", "then", "not",
        "no", "yes", "what", "whats", "what's", "wats", "wat", "which", "who", "why", "when", "where", "how",
        "hw", "much", "many", "big", "current", "currently", "total", "supply", "exist", "exists", "left",
        "still", "balance", "balances", "bal", "wallet", "hold", "holds", "own", "owns", "check", "show",
        "tell", "query", "look", "up", "find", "see", "know", "token", "tokens", "coin", "coins", "funds",
        "money", "crypto", "loan", "debt", "position", "vault", "collateral", "allowance", "approval",
        "permission", "spending", "spend", "rest", "friend", "side", "other", "natively", "asap", "thx",
        "thanks", "thank", "ty", "lol", "real", "quick", "slippage", "price", "same", "again", "more", "less",
        "too", "very", "amount", "everything", "entire", "whole", "full", "lent", "mine", "paying", "receive",
        "arrival", "spender", "mainnet", "chain", "network", "l1", "l2", "base", "all", "max", "payment", "pay",
        "staking", "list", "number", "existence", "minted", "should", "credit", "plain", "form", "version", "work",
        "buying", "wrapped", "unwrapped", "count", "across", "interest", "yield", "native", "normal", "regular",
        "today", "tomorrow", "tonight", "yesterday", "week", "weeks", "weekend", "month", "months", "year", "years",
        "day", "days", "morning", "later", "soon",
    }
)  # fmt: skip

_TOTAL_SUPPLY_QUESTION = re.compile(
    r"\bho?w\s+(?:much|many)\b.*\b(?:in\s+total|exists?|are\s+there|been\s+minted)\b"
    r"|\bin\s+existence\b|\bcount\b.*\bexists?\b"
)
_BALANCE_QUESTION = re.compile(
    r"\bho?w\s+(?:much|many)\b.*\b(?:have|hold|holds|own|owns|got)\b"
    r"|\bin\s+my\s+wallet\b|\bdo\s+i\s+(?:still\s+)?(?:have|hold|own)\b|\bwhat\s+does\b.*\b(?:hold|own|have)\b"
)
_REPAY_IT = re.compile(r"\b(?:pay|return|repay)\s+(?:it|them)\b")  # "i borrowed 5 dai on aave, pay it back"
_BALANCE_WORDS = ("balance", "balances", "bal", "holdings")
_APPROVAL_WORDS = frozenset({"approval", "permission", "allowance", "approve"})
# "give aave unlimited approval for my usdt": after these verbs the spender comes first.
_SPENDER_FIRST_VERBS = frozenset({"give", "let", "allow", "grant", "authorize", "authorise"})
# "get 9 weth back to plain eth": the native coin, named without its ticker.
_PLAIN_WORDS = frozenset({"plain", "native", "normal", "regular", "real", "unwrapped"})
_WHERE_FIELDS = frozenset({"chain", "protocol"})
_DEBT_WORDS = frozenset({"loan", "loans", "debt", "debts", "borrowing", "borrowed"})
_RECEIVE_WORDS = frozenset({"receive", "get", "want"})  # "bridge usdc to base and receive eth"
_PAY_WORDS = frozenset({"pay", "paying", "using", "with"})  # "buy 100 ena and pay with tbtc"

# Where a chain may be written, by clause family: after these cues a known chain name is a
# chain, not a token ("swap 1 reth to eth": "eth" is token2; "bridge 1 eth to base": a chain).
_CHAIN_CUES = {
    "swap": {"on", "from"},
    "buy": {"on", "from"},
    "buy_using": {"on", "from"},
    "bridge": {"on", "from", "to"},
    "send": {"on", "from", "to"},
    "approve": {"on"},
    "wrap": {"on"},
    "lending": {"on", "from"},
    "stake": {"on", "from"},
    "read": {"on", "from"},
}
# Families whose actions take a protocol; elsewhere a protocol name is read only after "on"
# ("swap on uniswap"), so that "swap uni for eth" keeps UNI as a token.
_PROTOCOL_FAMILIES = frozenset({"approve", "lending", "stake"})
# Cues after which an unregistered name is the protocol ("supply 4 cbeth to moonwell").
_NEW_PROTOCOL_CUES = {"lending": {"on", "to", "from", "with"}, "stake": {"on", "to", "from", "with"}}

_LENDING = frozenset({Action.DEPOSIT, Action.WITHDRAW, Action.BORROW, Action.REPAY})
_READS = frozenset({Action.BALANCE, Action.TOTAL_SUPPLY})
# The token a step leaves for "it" in the next one. Absent: that token is usually not written in
# the request (staking ETH yields stETH, wrapping yields WETH), so nothing is filled in.
_OUTPUT_FIELDS: dict[Action, tuple[str, ...]] = {
    Action.SWAP: ("token2",),
    Action.BRIDGE: ("token2", "token1"),
    Action.TRANSFER: ("token1",),
    Action.WITHDRAW: ("token1",),
    Action.BORROW: ("token1",),
    Action.UNSTAKE: ("token1",),
    Action.APPROVE: ("token1",),
    Action.BALANCE: ("token1",),
    Action.TOTAL_SUPPLY: ("token1",),
}

_LEADING_PUNCT = "\"'([{*<“‘«"
_TRAILING_PUNCT = "\"')]}!?,;:.…*”’»"
_BREAK_PUNCT = frozenset(",;:.!?…")
_SEPARATORS = frozenset({"and", "then", "&"})
_SCALE_WORDS = frozenset({"hundred", "thousand", "million", "billion"})
_GLUED = re.compile(r"^(\d[\d,.]*)(\$?[a-zA-Z][a-zA-Z0-9.]*)$")  # "100link", "0.05PEPE"
_TICKERISH = re.compile(r"^\$?[a-z0-9][a-z0-9.+_-]{0,19}$")
_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_ENS_TLDS = frozenset({"eth", "xyz", "crypto", "box", "nft", "lens", "sol", "id"})
_BASE58 = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")


def _slip(word: str, target: str) -> bool:
    """Whether `word` is `target` typed with one slip that keeps the first letter: a letter
    dropped, doubled, or swapped with its neighbour. A different letter is no slip: 'tell'
    is not 'sell', 'more' is not 'move'."""
    if len(target) < 4 or len(word) < 3 or word[:1] != target[:1] or word == target:
        return False
    if len(word) == len(target) - 1:
        return any(target[:i] + target[i + 1 :] == word for i in range(1, len(target)))
    if len(word) == len(target) + 1:
        return any(word[i] == word[i - 1] and word[:i] + word[i + 1 :] == target for i in range(1, len(word)))
    if len(word) == len(target):
        diff = [i for i in range(len(word)) if word[i] != target[i]]
        if len(diff) != 2 or diff[1] != diff[0] + 1:
            return False
        return word[diff[0]] == target[diff[1]] and word[diff[1]] == target[diff[0]]
    return False


def _skeleton(word: str) -> str:
    """A word without its vowels after the first letter, doubled letters once: 'borrow' -> 'brw'."""
    kept = word[:1] + "".join(c for c in word[1:] if c not in "aeiou")
    return "".join(c for i, c in enumerate(kept) if i == 0 or c != kept[i - 1])


def _like(word: str, target: str) -> bool:
    return word == target or _slip(word, target)


# --------------------------------------------------------------------------- words and clauses


@dataclass(frozen=True)
class _Word:
    low: str  # lower-cased, edge punctuation dropped: what the lexicons see
    start: int  # offsets of the word in the request
    end: int
    value_end: int  # end without a possessive "'s" ("bob.eth's"): values are read up to here
    stop: str = ""  # punctuation after the word that ends the clause: "", ":" or "," (any other)

    @property
    def key(self) -> str:
        """The word without a possessive: 'usdc's' -> 'usdc'."""
        return self.low[: len(self.low) - (self.end - self.value_end)]


def _words(request: str, keep_whole: Callable[[str], bool]) -> list[_Word]:
    words: list[_Word] = []
    for match in WORD.finditer(request):
        start, end = match.start(), match.end()
        while start < end and request[start] in _LEADING_PUNCT:
            start += 1
        stop = end
        while stop > start and request[stop - 1] in _TRAILING_PUNCT:
            stop -= 1
        breaks = [c for c in request[stop:end] if c in _BREAK_PUNCT]
        mark = "" if not breaks else ":" if ":" in breaks else ","
        if start == stop:  # punctuation only: it may still end the previous clause
            if mark and words:
                words[-1] = replace(words[-1], stop=mark)
            continue
        text = request[start:stop]
        low = text.lower().replace("’", "'")
        value_end = stop - 2 if low.endswith("'s") and len(low) > 2 else stop
        glued = _GLUED.match(text)
        if glued and not keep_whole(text):  # "100link": an amount and a token, written together
            cut = start + glued.end(1)
            words.append(_Word(low[: glued.end(1)], start, cut, cut))
            words.append(_Word(low[glued.end(1) :], cut, stop, value_end, mark))
        else:
            words.append(_Word(low, start, stop, value_end, mark))
    return words


def _inside_number(words: list[_Word], k: int) -> bool:
    """'and' in 'one hundred and fifty' is part of the amount, not a clause separator."""
    if k == 0 or k + 1 >= len(words) or words[k - 1].low not in _SCALE_WORDS:
        return False
    return words[k + 1].low.isalpha() and _safe(canonical_amount, words[k + 1].low) is not None


def _clauses(words: list[_Word]) -> list[list[_Word]]:
    clauses: list[list[_Word]] = [[]]
    for k, word in enumerate(words):
        if word.low in _SEPARATORS and not _inside_number(words, k):
            clauses.append([])
            continue
        clauses[-1].append(word)
        if word.stop:
            clauses.append([])
    return [clause for clause in clauses if clause]


def _safe(function: Callable[[str], str], raw: str) -> str | None:
    try:
        return function(raw)
    except NormalizationError:
        return None


# --------------------------------------------------------------------------- mentions and steps


@dataclass
class _Mention:
    kind: str  # "amount" | "address" | "chain" | "protocol" | "token"
    raw: str  # the span as written in the request
    cue: str  # what introduces it: "on", "to", "from", "for", "with", "of", "as", "verb", "amount", ...
    index: int  # position of its first word in the clause
    amount: _Mention | None = None  # a token: the amount written right before it ("2.5k usdc")


@dataclass
class _Clause:
    words: list[_Word]
    start: int  # index of the first word after the verb phrase (or after "i need", "pls", ...)
    mentions: list[_Mention] = field(default_factory=list)

    def first(self, kind: str, cues: Iterable[str] | None = None, skip: Iterable[str] = ()) -> _Mention | None:
        cues, skip = (None if cues is None else set(cues)), set(skip)
        for mention in self.mentions:
            if mention.kind == kind and (cues is None or mention.cue in cues) and mention.cue not in skip:
                return mention
        return None

    def tokens(self) -> list[_Mention]:
        return [m for m in self.mentions if m.kind == "token"]


@dataclass
class _Step:
    action: Action | None  # None: a clause that only names chains ("on base: ...", "from a to b:")
    fields: dict[str, str]
    reading: tuple[str, Action | None] | None = None  # how to read an elliptic next clause
    open: bool = False  # its clause ended with ":" ("make a swap: 1 eth to usdc")
    continued: bool = False  # an elliptic clause that repeats the previous action


# Words a request uses around its values (verbs, politeness, prepositions, fillers): never a token
# the registry does not know. Constrained decoding (brianft.constrain) uses them too.
NOT_TOKEN_WORDS = _NOT_TOKENS | set(_VERBS) | _PREFIX_WORDS | set(_CUES) | _FILLERS | set(_PARTICIPLES)


class RulesExtractor:
    """Rule-based extraction into the model's target format; see the module docstring."""

    def __init__(self, canonicalizer: Canonicalizer | None = None) -> None:
        self.canonicalizer = canonicalizer or Canonicalizer.default()
        registry = self.canonicalizer.registry
        self._protocol_slugs = registry.protocol_slugs
        self._token_names = frozenset(registry.tokens)
        tickers = {*registry.tokens.values(), *registry.wrapped_natives.values()}
        self._native_of = {wrapped: native for native, wrapped in registry.wrapped_natives.items()}
        self._token_words = self._token_names | {ticker.lower() for ticker in tickers}
        # Chain slugs that are not token names ("arbitrum", but not "avalanche"): such a word is a
        # token only right after an amount.
        self._chain_only = frozenset(s for s in registry.chain_slugs if len(s) >= 5 and s not in registry.tokens)
        self._not_tokens = NOT_TOKEN_WORDS
        self._not_token_typos = tuple(w for w in self._not_tokens if len(w) >= 4)
        # The same words and n-grams come back all the time; canonicalisation is pure: memoise it.
        memo = lru_cache(maxsize=50_000)
        self._amount = memo(lambda raw: _safe(canonical_amount, raw))
        self._token = memo(lambda raw: _safe(self.canonicalizer.token, raw))
        self._protocol = memo(lambda raw: _safe(self.canonicalizer.protocol, raw))
        self._chain = memo(self._chain_uncached)
        self._verb = memo(self._verb_uncached)
        self._prefix = memo(lambda low: low in _PREFIX_WORDS or any(_slip(low, p) for p in _PREFIX_WORDS))
        self._never_token = memo(self._never_token_uncached)

    # ----------------------------------------------------------------------- public API

    def extract_text(self, request: str, fmt: TargetFormat = "fields") -> str:
        """The intents of `request` in a target format, values as written, or 'none'."""
        if not isinstance(request, str):
            return NO_INTENT
        steps: list[_Step] = []
        for words in _clauses(_words(request, self._keep_whole)):
            step = self._read_clause(request, words, steps)
            if step is None or _repeats(step, steps):
                continue
            if step.continued and steps and steps[-1].open and steps[-1].action is not None:
                steps[-1] = _merge(steps[-1], step)  # "make a swap: 1 eth to usdc"
            else:
                steps.append(step)
            if words[-1].stop == ":" and step.action is not None:
                steps[-1].open = True
        intents = self._resolve_context(steps)
        return render_target(intents, fmt) if intents else NO_INTENT

    def predict(self, request: str) -> Prediction:
        return decode_prediction(self.extract_text(request), self.canonicalizer)

    # ----------------------------------------------------------------------- clauses

    def _read_clause(self, request: str, words: list[_Word], steps: list[_Step]) -> _Step | None:
        keys = [w.key for w in words]
        previous = next((s for s in reversed(steps) if s.action is not None), None)
        verb = self._find_verb(words)
        if steps and steps[-1].open and verb is None:
            step = self._continuation(request, words, previous)
            if step is not None and step.continued:
                return step  # "settle up with bob.eth: the entire balance of brett"
        opened = steps[-1] if steps and steps[-1].open and not steps[-1].fields else None
        if opened is not None and opened.reading is not None and verb is not None:
            family, action = opened.reading  # "i want to stop staking: unlock 5 reth"
            clause = self._scan(request, _Clause(words, verb[1]), family)
            return replace(self._assemble(request, clause, family, action), continued=True)
        if _is_total_supply(keys):
            return self._read(request, _Clause(words, 0), Action.TOTAL_SUPPLY)
        if verb is not None and previous is not None and self._complete_previous(request, words, previous):
            return None  # "... and get ldo", "... and pay with tbtc"
        if verb is not None and verb[0] == "raise" and steps and steps[-1].reading == ("approve", Action.APPROVE):
            return self._assemble(request, self._scan(request, _Clause(words, verb[1]), "approve"), "approve", None)
        balance_verb = verb is not None and verb[0] in ("get", "give") and _is_balance(keys)  # "give me my balances"
        if verb is not None and not balance_verb and not _noun_use(words, verb[1]):
            reading = _classify(verb[0], words, verb[1])
            if reading is not None:
                family, action, start = reading
                clause = self._scan(request, _Clause(words, start), family)
                weak = words[verb[1] - 1].low in _WEAK_VERBS and words[-1].stop != ":"  # not "make a swap:"
                if not weak or self._evidence(clause):
                    return self._assemble(request, clause, family, action)
                return None
        if verb is None and (step := self._recipient_first(request, words)):
            return step
        if _is_balance(keys):
            return self._read(request, _Clause(words, 0), Action.BALANCE)
        if previous is not None and self._complete_previous(request, words, previous):
            return None
        if verb is None and (step := self._after_need(request, words) or self._borrowed(request, words)):
            return step
        return self._continuation(request, words, previous)

    def _evidence(self, clause: _Clause) -> bool:
        """Whether a clause speaks of wallets: a value other than a lower-case unknown word."""
        for mention in clause.mentions:
            if mention.kind in ("amount", "address", "chain"):
                return True
            if mention.kind == "protocol" and (self._is_protocol(mention.raw, 1) or clause.first("token")):
                return True  # registered, or next to a token: "put the weth in moonwell", not "add me on twitter"
            known = mention.raw.lower() in self._token_names or mention.raw.startswith("$")
            if mention.kind == "token" and (known or mention.raw != mention.raw.lower()):
                return True  # "ether", "$pepe", "ETH"
        return False

    def _complete_previous(self, request: str, words: list[_Word], previous: _Step) -> bool:
        """Clauses that finish the previous step instead of adding one: 'bridge usdc to base and
        receive eth' (token2), 'dump weth and get ldo' (token2), 'buy 100 ena and pay with tbtc'
        (token1). Only when the clause names one token and no amount."""

        def says(words_of_kind: frozenset[str]) -> bool:
            return any(_like(w.low, kind) for w in words for kind in words_of_kind)

        fields = previous.fields
        wanted = None
        if previous.action in (Action.BRIDGE, Action.SWAP) and "token2" not in fields and says(_RECEIVE_WORDS):
            wanted = "token2"
        elif previous.action is Action.SWAP and "token1" not in fields and says(_PAY_WORDS):
            wanted = "token1"
        if wanted is None:
            return False
        clause = self._scan(request, _Clause(words, 0), "read")
        tokens = clause.tokens()
        if len(tokens) != 1 or clause.first("amount") or clause.first("address"):
            return False
        fields[wanted] = tokens[0].raw
        return True

    def _continuation(self, request: str, words: list[_Word], previous: _Step | None) -> _Step | None:
        """A clause without a verb: the previous action again ('... and 2 dai to bob.eth'), its
        amount ('eth -> weth, amount 2'), a bare swap ('20 usdc -> wbtc'), chains or a protocol or
        token for what follows ('on base: ...', 'from aave, ...'), or nothing."""
        start = self._after_prefix(words)
        if previous is not None and start < len(words) and words[start].low == "amount":
            clause = self._scan(request, _Clause(words, start + 1), "bridge")
            for name, mention in (("amount", clause.first("amount")), ("chain", clause.first("chain"))):
                if mention is not None and name in ALLOWED_FIELDS[previous.action]:
                    previous.fields.setdefault(name, mention.raw)
            return None
        if previous is not None and previous.reading is not None:
            family, action = previous.reading
            clause = self._scan(request, _Clause(words, 0), family)
            amounts = any(t.amount is not None for t in clause.tokens())
            if amounts or (family == "send" and clause.first("address") and clause.first("amount")):
                return replace(self._assemble(request, clause, family, action), continued=True)
        clause = self._scan(request, _Clause(words, start), "swap")
        arrow = any(w.low in ("->", "→") for w in words)
        target = clause.first("token", cues=("to", "for"))
        source = clause.tokens()[0] if clause.tokens() else None
        starts_with_amount = bool(clause.mentions) and clause.mentions[0].kind == "amount"
        starts_with_amount = starts_with_amount and clause.mentions[0].index == start
        if target is not None and source is not None and source is not target:
            with_amount = source.amount is not None and (arrow or starts_with_amount)  # "20 usdc -> wbtc on polygon"
            if with_amount or (arrow and words[-1].stop):  # "eth -> weth, amount 2": the amount comes next
                return self._assemble(request, clause, "swap", Action.SWAP)
        clause = self._scan(request, _Clause(words, 0), "bridge")
        if clause.mentions and all(m.kind == "chain" for m in clause.mentions):
            fields: dict[str, str] = {}
            _put(fields, "chain", clause.first("chain", skip=("to",)))
            _put(fields, "dest_chain", clause.first("chain", cues=("to",)))
            return _Step(None, fields)
        return self._topic(request, words) if words[-1].stop else None

    def _topic(self, request: str, words: list[_Word]) -> _Step | None:
        """A clause that only names what the next one acts on: 'from spark, remove 5 usdc', 'my
        morpho loan: pay back 1k dai', 'dai: how many were minted?', 'uniswap needs a bigger
        allowance, raise it to 1k uni'."""
        start = self._after_prefix(words)
        if "allowance" in {w.low for w in words}:
            clause = self._scan(request, _Clause(words, start), "approve")
            spender = clause.mentions[0] if clause.mentions and clause.mentions[0].index == start else None
            if spender is None or spender.kind not in ("protocol", "token") or spender.amount is not None:
                return None
            name = spender.raw if spender.kind == "protocol" else _whole_name(request, clause, spender)
            return _Step(None, {"protocol": name}, reading=("approve", Action.APPROVE))
        clause = self._scan(request, _Clause(words, start), "lending")
        kinds = {m.kind for m in clause.mentions}
        fields: dict[str, str] = {}
        if "protocol" in kinds and kinds <= {"protocol", "chain"}:
            _put(fields, "protocol", clause.first("protocol"))
            _put(fields, "chain", clause.first("chain"))
        elif len(clause.mentions) == 1 and kinds == {"token"} and words[-1].stop == ":":
            _put(fields, "token1", clause.mentions[0])  # "dai: how many were minted?"
        elif len(clause.mentions) == 1 and kinds == {"address"} and start and words[start - 1].low == "to":
            _put(fields, "address", clause.mentions[0])  # "to bob.eth: wire 5 dai"
        return _Step(None, fields) if fields else None

    def _after_need(self, request: str, words: list[_Word]) -> _Step | None:
        """'i need 5 brett moved from polygon to base': the action is a participle; or what is
        needed names it: 'i need a loan of 5 dai', 'i want plain eth from 2 weth', 'i want 5
        usdc back from aave'."""
        start = self._after_prefix(words)
        if not any(_like(w.low, need) for w in words[:start] for need in ("need", "want", "wanna", "like")):
            return None
        rest = [w.low for w in words[start:] if w.low not in ("a", "an")]
        wanted = rest[0] if rest else ""
        if wanted in ("loan", "credit"):
            family, action = "lending", Action.BORROW
        elif wanted in ("plain", "weth", "wrapped") and (source := _after_source_cue(words, start)) > start:
            family, action, start = "wrap", Action.UNWRAP if wanted == "plain" else Action.WRAP, source
        elif ("back" in rest and "from" in rest) or _taken_out_of(words[start:]):
            family, action = "lending", Action.WITHDRAW  # "i want 5 usdc back from aave", "... 4 eth out of my weth"
        elif verb := next((_PARTICIPLES[w.low] for w in words[start:] if w.low in _PARTICIPLES), None):
            reading = _classify(verb, words, start)
            if reading is None:
                return None
            family, action, _ = reading
        else:
            return None
        return self._assemble(request, self._scan(request, _Clause(words, start), family), family, action)

    def _recipient_first(self, request: str, words: list[_Word]) -> _Step | None:
        """'bob.eth should get 5 dai, shoot it over': a transfer, the recipient named first."""
        start = self._after_prefix(words)
        if [w.low for w in words[start + 1 : start + 3]] != ["should", "get"]:
            return None
        if not self._is_address(request[words[start].start : words[start].value_end]):
            return None
        return self._assemble(request, self._scan(request, _Clause(words, start), "send"), "send", None)

    def _borrowed(self, request: str, words: list[_Word]) -> _Step | None:
        """'i borrowed 5 dai from aave, pay it back': the loan the clause describes is repaid."""
        start = self._after_prefix(words)
        if start >= len(words) or words[start].low != "borrowed" or not _REPAY_IT.search(request.lower()):
            return None
        clause = self._scan(request, _Clause(words, start + 1), "lending")
        return self._assemble(request, clause, "lending", Action.REPAY)

    def _after_prefix(self, words: list[_Word]) -> int:
        """Index of the first word after 'pls', 'i need', emoji and the like."""
        skip = (i for i, w in enumerate(words) if any(c.isalnum() for c in w.low) and not self._prefix(w.low))
        return next(skip, len(words))

    def _find_verb(self, words: list[_Word]) -> tuple[str, int] | None:
        """(verb class, index after the verb) when the clause starts with an action verb."""
        for index, word in enumerate(words):
            if not any(c.isalnum() for c in word.low):
                continue  # emoji, arrows
            if word.low in _VERBS:
                return _VERBS[word.low], index + 1
            if self._prefix(word.low):
                continue
            verb = self._verb(word.low)
            return (verb, index + 1) if verb is not None else None
        return None

    def _verb_uncached(self, word: str) -> str | None:
        """A verb class for a misspelt verb, when exactly one class fits."""
        if not word.isalpha():
            return None
        classes = {cls for verb, cls in _VERBS.items() if _slip(word, verb)}
        if len(word) >= 3 and _skeleton(word) == word:  # vowels left out: "brw", "stk", "lnd"
            classes |= {cls for verb, cls in _VERBS.items() if _skeleton(verb) == word}
        if len(word) >= 5:
            classes |= {_VERBS[v] for v in _LONG_VERBS if DamerauLevenshtein.distance(word, v) == 1}
        return classes.pop() if len(classes) == 1 else None

    # ----------------------------------------------------------------------- mentions

    def _scan(self, request: str, clause: _Clause, family: str) -> _Clause:
        """Find the mentions of a clause, left to right, each with what introduces it."""
        words = clause.words
        ends: dict[int, _Mention] = {}  # index of a mention's last word -> the mention
        index = clause.start
        while index < len(words):
            cue = _cue(words, index, clause.start, ends)
            amount = _amount_before(words, index, ends)
            found = self._mention_at(request, clause, index, cue, family, amount)
            if found is None:
                index += 1
                continue
            mention, width = found
            if mention.kind == "token" and amount is not None:
                mention.amount, mention.cue = amount, amount.cue  # "for 100 usdc": the token is cued "for"
            clause.mentions.append(mention)
            ends[index + width - 1] = mention
            index += width
        return clause

    def _mention_at(
        self, request: str, clause: _Clause, index: int, cue: str, family: str, amount: _Mention | None
    ) -> tuple[_Mention, int] | None:
        words = clause.words
        word = words[index]
        raw = request[word.start : word.value_end]
        if self._is_address(raw):
            return _Mention("address", raw, cue, index), 1
        if found := self._registry_token_span(request, words, index):
            return _Mention("token", found[0], cue, index), found[1]  # "lido staked ether" is no protocol
        protocol_ok = amount is None and self._protocol_place(family, cue, words, index)
        chain_cue = cue in _CHAIN_CUES[family] or cue == "after_protocol"
        chain_cue = chain_cue or (cue == "with" and self._chain_after_with(clause, family))
        if chain_cue and amount is None:
            # "on aave" is a protocol, "on base" a chain, "arbitrum one" a chain (not the amount "one")
            if protocol_ok and (found := self._span(request, words, index, 3, self._is_protocol)):
                return _Mention("protocol", found[0], cue, index), found[1]
            if found := self._span(request, words, index, 4, self._is_chain):
                return _Mention("chain", found[0], cue, index), found[1]
        if found := self._amount_span(request, words, index):
            return _Mention("amount", found[0], cue, index), found[1]
        if protocol_ok and (found := self._span(request, words, index, 3, self._is_protocol)):
            return _Mention("protocol", found[0], cue, index), found[1]
        if found := self._token_span(request, words, index, amount is not None):
            kind = "protocol" if self._new_protocol(clause, family, cue, found[0], amount) else "token"
            return _Mention(kind, found[0], cue, index), found[1]
        return None

    @staticmethod
    def _protocol_place(family: str, cue: str, words: list[_Word], index: int) -> bool:
        """Whether a registered protocol name here is the protocol (else it may be a token: 'swap
        uni for eth', 'withdraw my frax from aave', but 'repay my aave loan')."""
        if family not in _PROTOCOL_FAMILIES:
            return cue == "on"  # "swap on uniswap": read, and dropped (swaps take no protocol)
        if family == "approve" or cue not in ("verb", ""):
            return True
        following = {w.low for w in words[index + 1 : index + 4]}  # "my compound iii debt"
        return bool(following & {"loan", "debt", "position", "vault", "stake", "deposit"})

    def _chain_after_with(self, clause: _Clause, family: str) -> bool:
        """'swap dai for gho using polygon': a chain, once the tokens are known ('buy 1 eth with
        matic' pays with MATIC)."""
        if family == "swap":
            return True
        return family in ("buy", "buy_using") and clause.first("token", cues=("with",)) is not None

    def _new_protocol(self, clause: _Clause, family: str, cue: str, raw: str, amount: _Mention | None) -> bool:
        """An unregistered name where a protocol goes: 'supply 4 cbeth to moonwell', 'approve
        twenty usdc for aerodrome' (the token is already known there)."""
        if amount is not None or clause.first("protocol") is not None or raw.lower() in self._token_names:
            return False
        if self._protocol(raw) is None:
            return False
        if family == "approve":
            return cue in ("for", "to", "with") and bool(clause.tokens())
        return cue in _NEW_PROTOCOL_CUES.get(family, ())

    def _span(
        self, request: str, words: list[_Word], index: int, longest: int, accept: Callable[[str, int], bool]
    ) -> tuple[str, int] | None:
        """The longest span of up to `longest` words from `index` that `accept` takes."""
        for width in range(min(longest, len(words) - index), 0, -1):
            span = words[index : index + width]
            if span[0].low in _FILLERS or span[-1].low in _CUES:
                continue
            raw = request[span[0].start : span[-1].value_end]
            if writable(raw) and accept(raw, width):
                return raw, width
        return None

    def _amount_span(self, request: str, words: list[_Word], index: int) -> tuple[str, int] | None:
        for width in range(min(5, len(words) - index), 0, -1):
            span = words[index : index + width]
            if span[0].low in _AMOUNT_EDGE_WORDS or span[-1].low in _AMOUNT_EDGE_WORDS:
                continue
            if width == 1 and span[0].low in ("a", "an"):  # "a" alone would read as 1
                continue
            raw = request[span[0].start : span[-1].end]
            if writable(raw) and not self._is_address(raw) and self._amount(raw) is not None:
                return raw, width
        return None

    def _registry_token_span(self, request: str, words: list[_Word], index: int) -> tuple[str, int] | None:
        """Registry names of several words: 'usd coin', 'shiba inu', 'lido staked ether'."""
        for width in (3, 2):
            span = words[index : index + width]
            if len(span) == width and " ".join(w.key for w in span) in self._token_names:
                raw = request[span[0].start : span[-1].value_end]
                if writable(raw):
                    return raw, width
        return None

    def _token_span(self, request: str, words: list[_Word], index: int, after_amount: bool) -> tuple[str, int] | None:
        word = words[index]
        raw = request[word.start : word.value_end]
        low = raw.lower()
        if not _TICKERISH.match(low) or not any(c.isalpha() for c in low) or self._never_token(low.lstrip("$")):
            return None
        if low in self._chain_only and not after_amount:
            return None
        return (raw, 1) if self._token(raw) is not None else None

    def _never_token_uncached(self, low: str) -> bool:
        if low in self._token_names:
            return False
        return low in self._not_tokens or any(_slip(low, word) for word in self._not_token_typos)

    def _keep_whole(self, text: str) -> bool:
        """Words that look glued ('1inch', '2.5k', '3M') but are one value."""
        low = text.lower()
        return (
            low.startswith("0x")
            or self._amount(text) is not None
            or low in self._token_names
            or self._protocol(text) in self._protocol_slugs
        )

    def _is_address(self, raw: str) -> bool:
        if _names_address(raw.lower()):  # a 0x address, or an ENS name that canonicalises
            return bool(_HEX_ADDRESS.match(raw)) or _safe(canonical_address, raw) is not None
        # base58 (Solana) addresses: long, and mixing digits with both cases, unlike any word
        return bool(_BASE58.match(raw)) and any(c.isdigit() for c in raw) and raw.lower() != raw != raw.upper()

    def _is_protocol(self, raw: str, _width: int) -> bool:
        return self._protocol(raw) in self._protocol_slugs

    def _is_chain(self, raw: str, width: int) -> bool:
        return self._chain(raw, width == 1) is not None

    def _chain_uncached(self, raw: str, fuzzy: bool) -> str | None:
        """The known chain slug of a span; misspellings only for single words ('arbitrun')."""
        chains = self.canonicalizer.registry.chains
        cleaned = " ".join(raw.lower().split()).strip(" .,!?")
        stripped = " ".join(w for w in cleaned.split() if w not in ("the", "chain", "network", "mainnet"))
        for candidate in (cleaned, stripped):
            if candidate in chains:
                return chains[candidate]
        if not fuzzy or len(cleaned) < 4 or cleaned in self._token_words:
            return None  # a token's name is no misspelt chain: 'wmatic' is not 'matic'
        slug = _safe(self.canonicalizer.chain, raw)
        return slug if slug is not None and self.canonicalizer.is_known_chain(slug) else None

    # ----------------------------------------------------------------------- actions and fields

    def _assemble(self, request: str, clause: _Clause, family: str, action: Action | None) -> _Step:
        reading = (family, action)
        if family == "swap":
            return _Step(*self._swap(clause), reading)
        if family in ("buy", "buy_using"):
            return _Step(Action.SWAP, _buy(clause, payer_first=family == "buy_using"), reading)
        if family == "bridge":
            return _Step(Action.BRIDGE, _bridge(clause), reading)
        if family == "send":
            return _Step(*_send(clause), reading)
        if family == "approve":
            return _Step(Action.APPROVE, _approve(request, clause, self._protocol, self._protocol_slugs), reading)
        assert action is not None  # wrap, lending, stake: the verb fixed the action
        fields = _token_and_amount(clause, skip_cues=("against", "as"))
        _put(fields, "chain", clause.first("chain"))
        _put(fields, "protocol", clause.first("protocol"))
        if action in (Action.DEPOSIT, Action.WITHDRAW) and (wrapping := self._wrapping(clause, action, fields)):
            return _Step(*wrapping, reading)
        return _Step(action, fields, reading)

    def _wrapping(
        self, clause: _Clause, action: Action, fields: dict[str, str]
    ) -> tuple[Action, dict[str, str]] | None:
        """A deposit of a native coin into its own wrapped token is a wrap, and a withdrawal from it
        an unwrap, when no lending protocol is named: 'deposit 2 eth into the weth contract', 'pull
        2 eth back out of the weth contract', 'get 9 weth back to plain eth', 'take 5 wbnb back to bnb'."""
        named = [m for m in clause.mentions if m.kind in ("token", "protocol")]
        if any(m.kind == "protocol" and self._is_protocol(m.raw, 1) for m in named):
            return None  # "withdraw 2 weth from aave"
        wrapped = next((m for m in named if self._token(m.raw) in self._native_of), None)
        if wrapped is None:
            return None
        native = next((m for m in named if self._token(m.raw) == self._native_of[self._token(wrapped.raw)]), None)
        if action is Action.DEPOSIT and native is None:
            return None
        if native is None and not any(w.low in _PLAIN_WORDS for w in clause.words):
            return None  # "withdraw 2 weth": from where is not said, so not read as an unwrap
        kept: dict[str, str] = {"token1": (wrapped if action is Action.WITHDRAW else native).raw}
        for name in ("amount", "chain"):
            if name in fields:
                kept[name] = fields[name]
        return (Action.UNWRAP if action is Action.WITHDRAW else Action.WRAP), kept

    def _read(self, request: str, clause: _Clause, action: Action) -> _Step:
        clause = self._scan(request, clause, "read")
        fields: dict[str, str] = {}
        _put(fields, "token1", clause.first("token"))
        _put(fields, "address", clause.first("address"))
        _put(fields, "chain", clause.first("chain"))
        return _Step(action, fields, None)

    def _swap(self, clause: _Clause) -> tuple[Action, dict[str, str]]:
        """sell/swap/trade X for Y; 'convert 1 eth to weth' is a wrap, 'turn weth into eth' an unwrap."""
        target = clause.first("token", cues=("to", "for"))
        source = next((t for t in clause.tokens() if t is not target and t.cue not in ("to", "for")), None)
        fields: dict[str, str] = {}
        _put(fields, "token1", source)
        _put(fields, "token2", target)
        if source is not None and source.amount is not None:
            fields["amount"] = source.amount.raw
        elif amount := clause.first("amount", skip=("to", "for")):
            fields["amount"] = amount.raw
        if target is not None and target.amount is not None:
            fields["amount_out"] = target.amount.raw  # "swap eth for 100 usdc"
        _put(fields, "chain", clause.first("chain"))
        if source is not None and target is not None:
            one, two = self._token(source.raw), self._token(target.raw)
            if one and two and two == "W" + one:
                return Action.WRAP, _without(fields, "token2", "amount_out")
            if one and two and one == "W" + two:
                return Action.UNWRAP, _without(fields, "token2", "amount_out")
        return Action.SWAP, fields

    # ----------------------------------------------------------------------- context

    def _resolve_context(self, steps: list[_Step]) -> list[dict[str, str]]:
        """Carry chain and lending protocol forward, fill 'it' from the previous step, and keep
        only the fields the action allows and the canonicaliser accepts."""
        _share_chain_between_siblings(steps)
        chain: str | None = None
        destination: str | None = None  # "from polygon to scroll: bridge 100 uni"
        protocol: str | None = None
        topic: dict[str, str] = {}  # what a clause without an action named for the next step
        previous: tuple[Action, dict[str, str]] | None = None
        intents: list[dict[str, str]] = []
        for step in steps:
            fields = dict(step.fields)
            if step.action is None:
                chain, destination = fields.get("chain", chain), fields.get("dest_chain")
                topic = fields
                continue
            allowed = ALLOWED_FIELDS[step.action]
            for name in ("protocol", "token1", "address"):  # "from aave, withdraw 5 dai", "dai: how many exist?"
                if name in topic and name in allowed:
                    fields.setdefault(name, topic[name])
            topic = {}
            if "chain" in fields:
                chain = fields["chain"]
            elif chain is not None and "chain" in allowed:
                fields["chain"] = chain
            if step.action is Action.BRIDGE:
                if destination is not None:
                    fields.setdefault("dest_chain", destination)
                    destination = None
                if "dest_chain" in fields:
                    chain = fields["dest_chain"]  # what follows a bridge happens on arrival
            if step.action in _LENDING or step.action is Action.APPROVE:
                if "protocol" in fields:
                    protocol = fields["protocol"]
                elif protocol is not None and step.action in _LENDING:
                    fields["protocol"] = protocol
                    _chain_back_on_protocol(intents[-1] if intents else {}, step, fields)
            output = _output_token(*previous) if previous is not None and step.action not in _READS else None
            if "token1" not in fields and output is not None and previous is not None:
                fields["token1"] = output
                _chain_back(intents[-1], previous[0], fields)
            clean = {name: value for name, value in fields.items() if name in allowed and self._valid(name, value)}
            intents.append({"action": step.action.value, **clean})
            previous = (step.action, clean)
        return intents

    def _valid(self, name: str, raw: str) -> bool:
        if not writable(raw):
            return False
        value = _safe(lambda text: self.canonicalizer.value(name, text), raw)
        if value is None:
            return False
        return name not in ("chain", "dest_chain") or self.canonicalizer.is_known_chain(value)


# --------------------------------------------------------------------------- clause helpers


def _repeats(step: _Step, steps: list[_Step]) -> bool:
    """'supply 5 eth to venus and lend it out', 'earn yield on 2k usdc, put it in aave', 'reduce my
    debt on arbitrum: repay 1k usdc there': the same action twice, one of them saying no more than
    where. The previous step takes what the two say (and `step` is dropped)."""
    if not steps or step.action is None or step.action is not steps[-1].action:
        return False
    previous = steps[-1].fields
    where_only = not set(step.fields) - _WHERE_FIELDS or not set(previous) - _WHERE_FIELDS
    if not where_only or any(previous.get(k, v) != v for k, v in step.fields.items()):
        return False
    previous.update(step.fields)
    return True


def _taken_out_of(words: list[_Word]) -> bool:
    """'4 eth out of my weth', 'my usdc out of compound': a thing taken out of a place, not 'be out
    of debt' or 'try out a few apps'."""
    lows = [w.low for w in words]
    return any(lows[i : i + 2] == ["out", "of"] and lows[i - 1] not in _NOT_TOKENS for i in range(1, len(lows)))


def _noun_use(words: list[_Word], after_verb: int) -> bool:
    return after_verb < len(words) and words[after_verb].low in _NOUN_USE


def _is_total_supply(keys: list[str]) -> bool:
    """'total supply' (also 'totl suply', 'total token supply') or 'how many X exist'."""
    for i, key in enumerate(keys[:-1]):
        following = keys[i + 2] if keys[i + 1] == "token" and i + 2 < len(keys) else keys[i + 1]
        if _like(key, "total") and _like(following, "supply"):
            return True
    if "big" in keys and any(_like(key, "supply") for key in keys):
        return True  # "how big is shib's supply?"
    return bool(_TOTAL_SUPPLY_QUESTION.search(" ".join(keys)))


def _is_balance(keys: list[str]) -> bool:
    if any(key in _BALANCE_WORDS or _slip(key, "balance") for key in keys):
        return True
    return bool(_BALANCE_QUESTION.search(" ".join(keys)))


def _cue(words: list[_Word], index: int, start: int, ends: dict[int, _Mention]) -> str:
    """What introduces the word at `index`: a preposition, a mention, or the verb."""
    for j in range(index - 1, start - 1, -1):
        if j in ends:
            return "amount" if ends[j].kind == "amount" else f"after_{ends[j].kind}"
        low = words[j].low
        if low in _FILLERS:
            continue
        if low == "of" and j > start and words[j - 1].low == "out":
            return "from"  # "take all my usdc out of fluid"
        return _CUES.get(low, "")
    return "verb"


def _amount_before(words: list[_Word], index: int, ends: dict[int, _Mention]) -> _Mention | None:
    """The amount mention right before `index`, with only 'of my' and the like between (or
    'i have in': 'everything i have in usdt'; but 'deposit 100 in aave' names no token)."""
    last = index - 1
    if last >= 1 and words[last].low == "in" and words[last - 1].low == "have" and last - 1 in ends:
        last -= 1  # the amount ends with "i have"
    for j in range(last, -1, -1):
        if j in ends:
            return ends[j] if ends[j].kind == "amount" else None
        if words[j].low not in _AMOUNT_TOKEN_FILLERS:
            return None
    return None


def _classify(verb: str, words: list[_Word], start: int) -> tuple[str, Action | None, int] | None:
    """(family of rules, action if the verb fixes it, index after the verb phrase)."""
    lows = {w.low for w in words}
    rest = [w.low for w in words[start:] if w.low not in ("a", "an", "the")]
    following = rest[0] if rest else ""
    if verb == "make" and following in ("weth", "wrapped"):  # "make weth out of 1 eth"
        return "wrap", Action.WRAP, _after_source_cue(words, start)
    if verb == "make" and "into" in lows:  # "make 100 of my matic into wmatic"
        return "swap", Action.SWAP, start
    if verb == "make":  # "make a swap: ...", "make a payment of 8 dai to sam.eth"
        noun = next((cls for name, cls in _VERB_NOUNS.items() if _like(following, name)), None)
        at = next(i for i in range(start, len(words)) if words[i].low == following) if noun else 0
        return _classify(noun, words, at + 1) if noun else None
    if verb == "pay":
        if following in ("back", "off", "down"):
            return "lending", Action.REPAY, start + 1
        return "send", None, start
    if verb == "settle":  # "settle 2,250 usdt of my debt", but "settle up with bob.eth: 100 dai"
        return ("send", None, start + 1) if following == "up" else ("lending", Action.REPAY, start)
    if verb == "give":
        return ("approve", Action.APPROVE, start) if lows & _APPROVAL_WORDS else ("send", None, start)
    if verb == "set":
        return ("approve", Action.APPROVE, start) if "allowance" in lows else None
    if verb == "use":  # "use 1 eth as collateral on aave", "use usdc to buy 0.5 gho"
        if "collateral" in lows:
            return "lending", Action.DEPOSIT, start
        return ("buy_using", Action.SWAP, start) if lows & {"buy", "purchase"} else None
    if verb == "take":
        if "loan" in lows:
            return "lending", Action.BORROW, start
        if "stake" in lows:
            return "stake", Action.UNSTAKE, start  # "take 5 eth out of my stake on lido"
        if {"from", "to"} <= lows and "out" not in lows:
            return "bridge", Action.BRIDGE, start  # "take 50 pepe from ethereum to op mainnet"
        return "lending", Action.WITHDRAW, start
    if verb == "get":
        return _classify_get(words, start, lows)
    if verb == "return":  # "return the 3 eth i borrowed from compound", but "return 5 dai to alex.eth"
        return ("send", None, start) if any(_names_address(w.low) for w in words) else ("lending", Action.REPAY, start)
    if verb == "earn":  # "earn interest on 2 weth in compound", "earn validator yield on 4 eth via ether.fi"
        staking = lows & {"staking", "staked", "validator", "restaking"}
        return ("stake", Action.STAKE, start) if staking else ("lending", Action.DEPOSIT, start)
    if verb in ("start", "stop"):  # "start staking 5 eth", "i want to stop staking: exit 5 steth"
        staking = following in ("staking", "stake")
        return ("stake", Action.STAKE if verb == "start" else Action.UNSTAKE, start + 1) if staking else None
    if verb == "open":  # "open a loan on spark for 14 weth"
        return ("lending", Action.BORROW, start) if lows & {"loan", "credit"} else None
    if verb == "ape":  # "ape into pepe with 50 usdc": buy the token after "into", pay "with"
        return ("buy", Action.SWAP, start + 1) if following in ("into", "in") else None
    if verb == "spend":  # "spend 1000 pepe buying tbtc"
        return ("buy_using", Action.SWAP, start) if "buying" in lows else None
    if verb == "raise":  # "... needs a bigger allowance, raise it to 1k uni": see _read_clause
        if lows & _DEBT_WORDS:
            return "lending", Action.BORROW, start  # "increase my aave loan by 0.25 weth"
        return ("approve", Action.APPROVE, start) if "allowance" in lows else None
    if verb == "reduce":  # "reduce my dai debt on aave by 3k", "service my debt: 400 usdt on lendle"
        return ("lending", Action.REPAY, start) if lows & _DEBT_WORDS else None
    if verb == "convert" and (form := _wrap_form(lows)):
        return "wrap", form, start  # "turn 2 weth back into its unwrapped form"
    if verb == "deposit" and words[start - 1].low == "put" and "work" in lows:
        return "stake", Action.STAKE, start  # "put 1 eth to work on lido"
    if verb == "swap" and following == "out" and words[start - 1].low == "cash":
        start += 1  # "cash out 100 mkr to pepe"
    family, action = {
        "swap": ("swap", Action.SWAP),
        "convert": ("swap", Action.SWAP),
        "buy": ("buy", Action.SWAP),
        "bridge": ("bridge", Action.BRIDGE),
        "send": ("send", None),
        "approve": ("approve", Action.APPROVE),
        "wrap": ("wrap", Action.WRAP),
        "unwrap": ("wrap", Action.UNWRAP),
        "deposit": ("lending", Action.DEPOSIT),
        "withdraw": ("lending", Action.WITHDRAW),
        "borrow": ("lending", Action.BORROW),
        "repay": ("lending", Action.REPAY),
        "stake": ("stake", Action.STAKE),
        "unstake": ("stake", Action.UNSTAKE),
    }[verb]
    return family, action, start


def _classify_get(words: list[_Word], start: int, lows: set[str]) -> tuple[str, Action | None, int]:
    """'get' is a wrap, an unwrap, a loan, a withdrawal, a bridge or a purchase by what follows."""
    if form := _wrap_form(lows, participle=True):
        return "wrap", form, start  # "get 100 eth wrapped up", "get 2 weth unwrapped"
    if lows & {"loan", "credit"}:
        return "lending", Action.BORROW, start  # "get 2.5k lusd as a loan from moonwell"
    if lows & {"out", "back"}:
        return "lending", Action.WITHDRAW, start  # "get my 10 link back out of aave"
    if "from" in lows and lows & {"to", "into", "onto"}:
        return "bridge", Action.BRIDGE, start  # "get 0.1 eth from base over to arbitrum"
    if "over" in lows and lows & {"to", "onto"}:
        return "send", None, start  # "get half the gho over to mantle", "get 3 weth over to bob.eth"
    return "buy", Action.SWAP, start


def _names_address(low: str) -> bool:
    """Whether a word has the shape of a 0x address or an ENS name (RulesExtractor._is_address also
    checks that the name canonicalises)."""
    return bool(_HEX_ADDRESS.match(low)) or ("." in low and low.rsplit(".", 1)[-1] in _ENS_TLDS)


def _wrap_form(lows: set[str], participle: bool = False) -> Action | None:
    """'into its (un)wrapped form / version', or a trailing participle ('get 2 eth wrapped up')."""
    if not participle and not lows & {"form", "version"}:
        return None
    if "unwrapped" in lows:
        return Action.UNWRAP
    return Action.WRAP if "wrapped" in lows and (not participle or lows & {"up", "form", "version"}) else None


def _after_source_cue(words: list[_Word], start: int) -> int:
    """Index after 'from' / 'out of' ('make weth out of 2 eth'): where the source token is written
    (`start` when there is none)."""
    for index in range(start, len(words)):
        if words[index].low == "from" or (words[index].low == "of" and words[index - 1].low == "out"):
            return index + 1
    return start


def _put(fields: dict[str, str], name: str, mention: _Mention | None) -> None:
    if mention is not None and name not in fields:
        fields[name] = mention.raw


def _without(fields: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k not in names}


def _merge(opened: _Step, continuation: _Step) -> _Step:
    return replace(opened, fields={**continuation.fields, **opened.fields}, open=False)


def _token_and_amount(clause: _Clause, skip_cues: Sequence[str] = (), skip: Sequence[int] = ()) -> dict[str, str]:
    """token1 and amount: the token written with an amount first ("half my eth"), else the first
    token; the amount is that token's, else an amount written alone ("repay 300 on spark")."""
    tokens = [t for t in clause.tokens() if t.cue not in skip_cues and t.index not in skip]
    token = next((t for t in tokens if t.amount is not None), tokens[0] if tokens else None)
    return _token1_with_amount(clause, token)


def _token1_with_amount(clause: _Clause, token) -> dict[str, str]:
    """token1, and the amount written with it, else an amount written alone in the clause."""
    fields: dict[str, str] = {}
    _put(fields, "token1", token)
    if token is not None and token.amount is not None:
        fields["amount"] = token.amount.raw
    elif amount := clause.first("amount"):
        fields["amount"] = amount.raw
    return fields


def _buy(clause: _Clause, payer_first: bool) -> dict[str, str]:
    """buy Y (with X): Y is token2 and its amount amount_out; X pays. 'use X to buy Y': X first."""
    tokens = clause.tokens()
    payer = (tokens[0] if tokens else None) if payer_first else clause.first("token", cues=("with", "for"))
    wanted = next((t for t in tokens if t is not payer and (payer_first or t.cue not in ("with", "for"))), None)
    fields: dict[str, str] = {}
    _put(fields, "token1", payer)
    _put(fields, "token2", wanted)
    if payer is not None and payer.amount is not None:
        fields["amount"] = payer.amount.raw
    if wanted is not None and wanted.amount is not None:
        fields["amount_out"] = wanted.amount.raw
    elif "amount" not in fields and (amount := clause.first("amount")):
        fields["amount_out"] = amount.raw
    _put(fields, "chain", clause.first("chain"))
    return fields


def _bridge(clause: _Clause) -> dict[str, str]:
    """bridge X from A to B (as Y)."""
    fields = _token_and_amount(clause, skip_cues=("to", "as"))
    _put(fields, "token2", clause.first("token", cues=("as",)))
    _put(fields, "chain", clause.first("chain", cues=("from",)) or clause.first("chain", skip=("to",)))
    _put(fields, "dest_chain", clause.first("chain", cues=("to",)))
    return fields


def _send(clause: _Clause) -> tuple[Action, dict[str, str]]:
    """send/move/transfer: to an address it is a transfer; 'from polygon to base' is a bridge."""
    address = clause.first("address")
    if address is None and clause.first("chain", cues=("to",)) is not None:
        return Action.BRIDGE, _bridge(clause)
    fields = _token_and_amount(clause)
    _put(fields, "address", address)
    _put(fields, "chain", clause.first("chain", skip=("to",)))
    return Action.TRANSFER, fields


def _approve(
    request: str, clause: _Clause, protocol: Callable[[str], str | None], protocol_slugs: frozenset[str]
) -> dict[str, str]:
    """approve <token> for <spender>, or <spender> for <amount> <token>: the side with the amount
    is the token; without one, the first name is the token ('approve eigen for paraswap'), except
    after 'give'/'let'/'grant' ... ('give aave unlimited approval for my usdt') or before 'to
    spend' ('approve pendle to spend my uni'). The spender is an address or the other name."""
    address = clause.first("address")
    names = [m for m in clause.mentions if m.kind in ("token", "protocol")]
    spender_span = None if address else _spender_before_spend(request, clause, protocol)
    if spender_span is not None:
        names = [m for m in names if m.index not in spender_span[1]]
    verb = clause.words[clause.start - 1].low if clause.start else ""
    token = next((m for m in names if m.amount is not None), None)
    if token is None and names:
        spender_first = address is None and spender_span is None and verb in _SPENDER_FIRST_VERBS
        token = names[1] if spender_first and len(names) > 1 else names[0]
    fields = _token1_with_amount(clause, token)
    if address is not None:
        fields["address"] = address.raw
    elif spender_span is not None:
        fields["protocol"] = spender_span[0]
    elif (spender := next((m for m in names if m is not token), None)) is not None:
        registered = protocol(spender.raw) in protocol_slugs
        fields["protocol"] = spender.raw if registered else _whole_name(request, clause, spender)
    _put(fields, "chain", clause.first("chain"))
    return fields


def _whole_name(request: str, clause: _Clause, mention: _Mention) -> str:
    """An unregistered name with the plain words after it: 'CoW Swap' (up to 3 words)."""
    taken = {m.index for m in clause.mentions}
    end = mention.index + 1
    while end < len(clause.words) and end - mention.index < 3 and end not in taken:
        low = clause.words[end].low
        if low in _CUES or low in _FILLERS or not low.isalnum() or clause.words[end - 1].stop:
            break
        end += 1
    raw = request[clause.words[mention.index].start : clause.words[end - 1].end]
    return raw if writable(raw) else mention.raw


def _spender_before_spend(
    request: str, clause: _Clause, protocol: Callable[[str], str | None]
) -> tuple[str, range] | None:
    """A short name before 'to spend' / 'to use', or after 'spent by', with the word positions it
    covers: 'approve CoW Swap to spend 1 weth', 'approve 25k crv to be spent by CoW Swap'."""
    lows = [w.low for w in clause.words]
    first = stop = None
    for index in range(clause.start, len(lows)):
        if lows[index] in ("spend", "use"):
            first, stop = clause.start, index - 1 if index > clause.start and lows[index - 1] == "to" else index
            break
        if lows[index] == "by" and index > clause.start and lows[index - 1] in ("spent", "used"):
            first = stop = index + 1
            while stop < len(lows) and stop - first < 3 and lows[stop] not in _CUES and lows[stop].isalnum():
                stop += 1
            break
    if first is None or stop is None:
        return None
    while first < stop and lows[first] in _FILLERS:
        first += 1
    span = clause.words[first:stop]
    if not 1 <= len(span) <= 3 or not all(w.low.replace(".", "").isalnum() for w in span):
        return None
    raw = request[span[0].start : span[-1].end]
    return (raw, range(first, stop)) if writable(raw) and protocol(raw) else None


def _output_token(action: Action, fields: dict[str, str]) -> str | None:
    return next((fields[name] for name in _OUTPUT_FIELDS.get(action, ()) if name in fields), None)


def _chain_back(previous: dict[str, str], action: Action, fields: dict[str, str]) -> None:
    """'buy 1000 usdc with eth and deposit it into compound on base': what 'it' is used on a
    chain was made there (unless a bridge moved it)."""
    if (
        "chain" in fields
        and "chain" not in previous
        and action is not Action.BRIDGE
        and "chain" in ALLOWED_FIELDS[action]
    ):
        previous["chain"] = fields["chain"]


def _chain_back_on_protocol(previous: dict[str, str], step: _Step, fields: dict[str, str]) -> None:
    """'use 1k link as collateral on aave and borrow 100 usdt on arb': a chain stated in a step that
    shares the previous step's protocol governs both (that lending position lives on one chain)."""
    lending = {a.value for a in _LENDING | {Action.APPROVE}}
    if previous.get("action") in lending and "chain" in step.fields and "chain" not in previous:
        previous["chain"] = step.fields["chain"]


def _share_chain_between_siblings(steps: list[_Step]) -> None:
    """'send 7 usdt to a.eth and 100 eigen to b.eth on bsc': a chain stated in an elliptic clause
    governs the clause it continues too."""
    for before, after in zip(steps, steps[1:], strict=False):
        if after.continued and "chain" in after.fields and before.action is after.action:
            before.fields.setdefault("chain", after.fields["chain"])
