"""Constrained decoding: the grammar accepts every label of the data and refuses what a request
does not support; decoding under it gives valid output on any model, drafted or not."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from brianft.constrain import COVERAGE_NATS, DRAFT_TIEBREAK_NATS, ConstrainedPicker, OutputGrammar, request_grammars
from brianft.data.spans import SpanFinder
from brianft.infer import _hf_generate, generate
from brianft.normalize import Canonicalizer
from brianft.prompting import encode_prompt
from brianft.target import example_target

SPANS = SpanFinder(Canonicalizer.default())


@pytest.fixture(scope="module")
def spans():
    return SPANS


def grammar(request: str, spans) -> OutputGrammar:
    return OutputGrammar.for_request(request, spans)


@pytest.mark.parametrize("fmt", ["fields", "slots"])
def test_every_label_of_the_default_data_is_allowed(spans, fmt):
    """Whole targets end validly and each of their prefixes may continue: decoding under the
    grammar can write every label the model is trained on, in either target format."""
    from brianft.config import load_config
    from brianft.data.dataset import build_splits

    splits = build_splits(load_config("configs/default.yaml").data, spans._canonicalizer)
    refused = []
    for example in [*splits.train, *splits.validation, *splits.test]:
        target, allowed = example_target(example, fmt=fmt), OutputGrammar.for_request(example.prompt, spans, fmt)
        if not allowed.allows_end(target) or not all(allowed.allows_prefix(target[:i]) for i in range(len(target))):
            refused.append((example.prompt, target))
    assert refused == []


@pytest.mark.parametrize(
    ("request_text", "output"),
    [
        ("swap 2.5k USDC for eth on Arbitrum One", "swap; token1=USDC; token2=eth; amount=2.5k; chain=Arbitrum One"),
        ("send 0.1 eth to vitalik.eth", "transfer; token1=eth; amount=0.1; address=vitalik.eth"),
        ("bal?", "balance"),
        ("how do I make an omelette?", "none"),
        ("ETH→WETH 4.25 on arb", "wrap; token1=ETH; amount=4.25; chain=arb"),  # a glued arrow splits words
        ("stargate 200 USDC arb->op", "bridge; token1=USDC; amount=200; chain=arb; dest_chain=op"),
        ("can you wrap one and a half eth for me", "wrap; token1=eth; amount=one and a half"),
        ("stake 3 bnb with ankr on bsc", "stake; token1=bnb; amount=3; chain=bsc; protocol=ankr"),
        ("pls take 49ether out of my stake with lido", "unstake; token1=ether; amount=49; protocol=lido"),
        (
            "wrap 1 eth, then deposit 1 weth into aave v3",
            "wrap; token1=eth; amount=1\ndeposit; token1=weth; amount=1; protocol=aave v3",
        ),
        (
            "bridge 5 usdc from polygon to avalanche",
            "bridge; token1=usdc; amount=5; chain=polygon; dest_chain=avalanche",
        ),
    ],
)
def test_valid_outputs_are_allowed(spans, request_text, output):
    assert grammar(request_text, spans).allows_end(output)


@pytest.mark.parametrize(
    ("request_text", "output", "why"),
    [
        ("how much degen does dwr.eth have", "balance; token1=degen; address=wr.eth", "part of a word"),
        ("LEND 1 USDT THROUGH SEAMLESS PLEASE", "deposit; token1=USDT; amount=1; protocol=PLE", "part of a word"),
        ("get 0.1 weth back to plain eth", "unwrap; token1=weth; amount=0.1; protocol=plaineth", "not in the request"),
        ("appove 1000 usdt on curve", "approve; token1=usdt; amount=1000; chain=curve", "a protocol as chain"),
        ("unwrap 0.5 weth", "unwrap; token1=weth; amount=0.5; chain=unwrap", "an action word as chain"),
        (
            "unlock all the wstETH from staking",
            "unstake; token1=wstETH; amount=all; protocol=staking",
            "unknown protocol",
        ),
        ("stake 12 eth on foochain", "stake; token1=eth; amount=12; chain=foochain", "unknown chain"),
        ("wrap 25% of my eth", "wrap; token1=eth; amount=25%; chain=eth", "a token as chain"),
        ("unwrap 0.5 on base", "unwrap; token1=0.5; amount=0.5", "a number as token"),
        ("wrap 2", "wrap; token1=wrap; amount=2", "a verb as token"),
        ("get half of the gho over to mantle", "bridge; token1=gho; token2=half", "an amount word as token"),
        (
            "deposit 1000 usdc to aave on optimism",
            "deposit; token1=usdc; protocol=aave; protocol=aave",
            "a field twice",
        ),
        ("deposit 1000 usdc to aave on optimism", "deposit; amount=1000; token1=usdc", "fields out of order"),
        ("send 1 eth to bob.eth", "transfer; token1=eth; amount=1; protocol=bob.eth", "a field the action lacks"),
        ("send 1 eth to bob.eth", "transfer; token1=eth; amount=2", "an amount not in the request"),
        (
            "increase the DAI allowance for 0xd88e5847f3c338139ea90005aa1f845293f57068 to 15k",
            "approve; token1=DAI; amount=0; address=0xd88e5847f3c338139ea90005aa1f845293f57068",
            "the 0 of an address as amount",
        ),
        ("swap 15k usdc for eth", "swap; token1=usdc; token2=eth; amount=15", "part of an amount"),
        ("approve 1inch for my dai", "approve; token1=dai; amount=1; protocol=1inch", "part of a protocol name"),
        (
            "bridge 0.2 eth to base and 0.2 eth to optimism",
            "bridge; token1=eth; amount=0.2; dest_chain=base\nbridge; token1=eth; amount=0.2; dest_chain=base",
            "an intent repeated that the request does not repeat",
        ),
        ("send 1 eth to bob.eth", "none\ntransfer; token1=eth", "none with intents"),
        ("send 1 eth to bob.eth", "teleport; token1=eth", "an unknown action"),
    ],
)
def test_unsupported_outputs_are_refused(spans, request_text, output, why):
    allowed = grammar(request_text, spans)
    assert not allowed.allows_end(output), why
    assert not allowed.allows_prefix(output) or not allowed.allows_prefix(output + "\n"), why


def test_slots_grammar(spans):
    allowed = OutputGrammar.for_request("send 1 eth to bob.eth on base", spans, "slots")
    assert allowed.allows_end("transfer|eth|1|base|bob.eth")
    assert allowed.allows_end("transfer|eth|1||bob.eth")
    assert allowed.allows_end("transfer|eth")
    for partial in ("transfer|", "transfer|eth|", "transfer|eth|1||"):
        assert allowed.allows_prefix(partial) and not allowed.allows_end(partial), partial
    assert not allowed.allows_prefix("transfer|eth|1|base|bob.eth|")  # transfer has 4 slots
    assert not allowed.allows_prefix("transfer|eth|1|bob.eth")  # an address in the chain slot
    assert not allowed.allows_prefix("transfer|eth|2")
    assert not allowed.allows_prefix("transfer; token1=eth")  # the other format
    nothing_after = OutputGrammar.for_request("wrap 1 eth", spans, "slots")
    assert nothing_after.allows_end("wrap|eth|1") and not nothing_after.allows_prefix("wrap|eth|1|")


def test_end_only_where_the_output_is_whole(spans):
    allowed = grammar("swap 1 eth for usdc on base", spans)
    for partial in ("", "sw", "swap;", "swap; tok", "swap; token1=", "swap; token1=et", "swap; token1=eth; ", "swap\n"):
        assert allowed.allows_prefix(partial) and not allowed.allows_end(partial), partial
    assert allowed.allows_end("swap; token1=eth; token2=usdc; amount=1; chain=base")
    # "...;" is refused once no field can follow: amount_out is the only one left, and it is not stated
    assert not allowed.allows_prefix("swap; token1=eth; token2=usdc; amount=1; chain=base;")


def test_values_are_copied_exactly_and_whole(spans):
    allowed = grammar("send 5 USDC to 0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045", spans)
    assert allowed.allows_end("transfer; token1=USDC; amount=5; address=0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045")
    assert not allowed.allows_end("transfer; token1=USDC; amount=5; address=0xd8dA6BF26964aF9D7eEd9e03E53415D37aA9604")
    assert not allowed.allows_end("transfer; token1=USDC; amount=5; address=d8dA6BF26964aF9D7eEd9e03E53415D37aA96045")
    # another case is another text: a checksummed address changes meaning, and the model is trained to copy
    assert not allowed.allows_end("transfer; token1=usdc; amount=5; address=0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045")
    assert not allowed.allows_end("transfer; token1=USDC; amount=5; address=0xd8da6bf26964af9d7eed9e03e53415d37aa96045")


@pytest.mark.parametrize(
    ("request_text", "refused"),
    [
        # an address or ENS name is not a ticker
        ("withdraw 2 eth from aave and pay treasury.base.eth with it", "transfer; token1=treasury.base.eth"),
        ("pay 0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045 with my gho", "transfer; token1=0xd8dA6BF26964aF9D7eEd9e03"),
        # a word of a multi-word chain or protocol name is not a ticker
        ("stake 5 on rocket pool", "stake; token1=rocket"),
        ("bridge 13,250 EIGEN into BINANCE SMART CHAIN", "bridge; token1=EIGEN; token2=BINANCE"),
        # a swap's token2 is not its token1
        ("sell 0.01 wbtc", "swap; token1=wbtc; token2=wbtc"),
        ("sell 0.01 wbtc", "swap; token1=wbtc; t"),
        # a swap fixes the amount in or the amount out, not both (here the same span twice)
        ("2M PEPE → 0xa571cC915C27eDC318e1ecEf8650d3C01403e488", "swap; token1=PEPE; amount=2M; amount_out="),
        ("swap 2 eth for 5000 usdc", "swap; token1=eth; token2=usdc; amount=2; amount_out="),
        # a name that is a token and a chain, right after "on", is the chain; "holdings" is no ticker
        ("pls what are my holdings on avalanche", "balance; token1=avalanche"),
        ("pls what are my holdings on avalanche", "balance; token1=holdings"),
        # a name that is a token and a chain, after an amount written in words, is the token
        ("put twenty ETH to work in staking", "stake; token1=ETH; amount=twenty; chain=E"),
    ],
)
def test_values_that_cannot_be_what_the_field_holds_are_refused(spans, request_text, refused):
    assert not grammar(request_text, spans).allows_prefix(refused)


def test_refusals_leave_the_right_reading(spans):
    assert grammar("approve 1inch for my dai", spans).allows_end("approve; token1=dai; protocol=1inch")
    assert grammar("swap 1 eth for 1inch", spans).allows_end("swap; token1=eth; token2=1inch; amount=1")
    repeat = "transfer; token1=DAI; amount=25; address=mike.eth"
    assert grammar("25 DAI to mike.eth x2 (two separate txs pls)", spans).allows_end(f"{repeat}\n{repeat}")
    # a line that starts like an earlier one may still become another ("bnb" -> "bnb chain")
    bridges = grammar("bridge 0.2 eth to base and 0.2 eth to optimism", spans)
    first = "bridge; token1=eth; amount=0.2; dest_chain=base"
    assert bridges.allows_end(f"{first}\nbridge; token1=eth; amount=0.2; dest_chain=optimism")
    assert not bridges.allows_prefix(f"{first}\nbridge; token1=eth; amount=0.2; dest_chain=ba")  # can only repeat
    wrap = grammar("on bnb chain I have some BNB, wrap 3 of them", spans)
    assert wrap.allows_end("wrap; amount=3; chain=bnb\nwrap; amount=3; chain=bnb chain")
    assert not wrap.allows_end("wrap; amount=3; chain=bnb\nwrap; amount=3; chain=bnb")
    assert grammar("check my balance and my usdc balance", spans).allows_end("balance\nbalance; token1=usdc")
    assert grammar("stake 5 on rocket pool", spans).allows_end("stake; amount=5; protocol=rocket pool")
    assert grammar("swap 1 weth for eth", spans).allows_end("swap; token1=weth; token2=eth; amount=1")
    assert grammar("buy 5000 usdc with eth", spans).allows_end("swap; token1=eth; token2=usdc; amount_out=5000")
    assert grammar("on eth, stake 2 eth", spans).allows_end("stake; token1=eth; amount=2; chain=eth")
    assert grammar("pls what are my holdings on avalanche", spans).allows_end("balance; chain=avalanche")


class ScriptedTokenizer:
    """Token i decodes to WORDS[i]: enough to test the picker without a model."""

    WORDS = ["<eos>", "swap", ";", " token1", "=", "eth", "usdc", " token2", "chain", "base", "\n", "wrap"]
    eos_token_id = 0

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.WORDS[i] for i in ids if i != 0 or not skip_special_tokens)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [i for i, w in enumerate(self.WORDS) if w and w.strip() and w.strip() in text]}


def test_a_close_draft_action_wins_over_the_models_choice(spans):
    picker = ConstrainedPicker(ScriptedTokenizer(), grammar("wrap 1 eth", spans), eos_id=0)
    scores = torch.zeros(len(ScriptedTokenizer.WORDS))
    scores[11] = -(DRAFT_TIEBREAK_NATS - 0.1)
    assert picker.pick([], [1, 11], scores, draft=11) == 11  # close: the draft's action
    scores[11] = -(DRAFT_TIEBREAK_NATS + 0.1)
    assert picker.pick([], [1, 11], scores, draft=11) == 1  # not close: the model's
    scores[9] = 0.0
    assert picker.pick([], [1, 9], scores, draft=9) == 1  # "base" is no action: never written
    assert picker.pick([1, 2, 3, 4], [5, 6], torch.zeros(12), draft=6) == 5  # "usdc" is not in the request
    assert picker.overrides == []


def test_a_close_draft_field_name_wins_but_values_stay_the_models(spans):
    picker = ConstrainedPicker(ScriptedTokenizer(), grammar("swap 1 eth for usdc", spans), eos_id=0)
    scores = torch.zeros(len(ScriptedTokenizer.WORDS))
    scores[7] = -1.0
    assert picker.pick([1, 2], [3, 7], scores, draft=7) == 7  # "swap;" + " token2" rather than " token1"
    off = ConstrainedPicker(ScriptedTokenizer(), picker.grammar, eos_id=0, draft_tiebreak=0)
    assert off.pick([1, 2], [3, 7], scores, draft=7) == 3


def test_a_draft_that_reads_no_intent_never_overrules_the_model(spans):
    """The rules write "none" for a request they cannot read as well as for one that asks for
    nothing: such a draft only speeds decoding up."""
    from brianft.infer import _pickers

    requests = ["wrap 1 eth", "250 GHO loan for me please", "gm"]
    grammars = request_grammars(requests, spans)
    pickers = _pickers(ScriptedTokenizer(), grammars, 4.0, ["wrap; amount=1; token1=eth", "none", " None "])
    assert [p.draft_tiebreak for p in pickers] == [4.0, 0.0, 0.0]
    assert [p.draft_tiebreak for p in _pickers(ScriptedTokenizer(), grammars, 4.0)] == [4.0] * 3


def test_a_close_draft_decides_which_fields_and_intents_there_are_and_values(spans):
    picker = ConstrainedPicker(ScriptedTokenizer(), grammar("swap eth for usdc", spans), eos_id=0)
    scores = torch.zeros(len(ScriptedTokenizer.WORDS))
    scores[2] = -(DRAFT_TIEBREAK_NATS - 0.1)
    swap_eth = [1, 2, 3, 4, 5]  # "swap; token1=eth"
    assert picker.pick(swap_eth, [0, 2], scores, draft=2) == 2  # the draft has another field: ";"
    scores[2] = -(DRAFT_TIEBREAK_NATS + 0.1)
    assert picker.pick(swap_eth, [0, 2], scores, draft=2) == 0  # not close: the model ends there
    scores[0] = -1.0
    assert picker.pick(swap_eth, [2, 0], scores, draft=0) == 0  # the draft ends where the model goes on
    scores[6] = -1.0  # a value: "swap; token1=" + "usdc" rather than the model's "eth"
    assert picker.pick([1, 2, 3, 4], [5, 6], scores, draft=6) == 6
    assert picker.pick([1, 2, 3, 4], [5, 2], scores, draft=2) == 5  # a draft that does not fit: the model's
    assert picker.overrides == []


@pytest.mark.parametrize(
    ("request_text", "output", "unused"),
    [
        ("swap 500 USDC for DAI and use it to repay spark", "swap; token1=USDC; token2=DAI; amount=500", ["spark"]),
        (
            "send 0.1 eth to a.eth and 50 usdc to carol.eth",
            "transfer; token1=eth; amount=0.1; address=a.eth",
            ["50", "carol.eth"],
        ),
        (
            "Does 0xdbe3c19788d0d90751175430b3d234284f5abf90 hold any WBTC?",
            "none",
            ["0xdbe3c19788d0d90751175430b3d234284f5abf90"],
        ),
        # used: as part of a longer value, as amount_out, as a token, as a protocol named like an ENS name
        ("i want to exchange 5 k ldo to WBTC on base", "swap; token1=ldo; token2=WBTC; amount=5 k; chain=base", []),
        ("buy 1000 USDC with ETH", "swap; token1=ETH; token2=USDC; amount_out=1000", []),
        ("stake 40 AAVE in Aave's safety module", "stake; token1=AAVE; amount=40", []),
        ("with Ether.fi, start staking 36 avax", "stake; token1=avax; amount=36; protocol=Ether.fi", []),
        ("rocket pool: unstake 2 rETH", "unstake; token1=rETH; amount=2; protocol=rocket pool", []),
        # number words, tokens and chains are not counted
        ("swap ten usdc for dai on base", "swap; token1=usdc; token2=dai", []),
        # the slots format is read too
        ("swap 500 USDC for DAI and use it to repay spark", "swap|USDC|DAI|500", ["spark"]),
    ],
)
def test_unused_lists_amounts_addresses_and_protocols_no_intent_uses(spans, request_text, output, unused):
    assert grammar(request_text, spans).unused(output) == unused


class NewlineTokenizer(ScriptedTokenizer):
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10]} if text == "\n" else super().__call__(text, add_special_tokens)


def test_an_unused_value_keeps_a_close_end_from_closing_the_output(spans):
    swap_eth = [1, 2, 3, 4, 5]  # "swap; token1=eth"
    scores = torch.zeros(len(ScriptedTokenizer.WORDS))
    scores[10] = -(COVERAGE_NATS - 0.1)
    unused = ConstrainedPicker(
        NewlineTokenizer(), grammar("swap eth for usdc and stake 5 eth on lido", spans), eos_id=0
    )
    assert unused.pick(swap_eth, [0, 10], scores) == 10  # "5" and "lido" unused, the end not much likelier: go on
    scores[10] = -(COVERAGE_NATS + 0.1)
    assert unused.pick(swap_eth, [0, 10], scores) == 0  # the model is sure enough: it ends
    scores[10] = -(COVERAGE_NATS - 0.1)
    covered = ConstrainedPicker(NewlineTokenizer(), grammar("swap eth for usdc", spans), eos_id=0)
    assert covered.pick(swap_eth, [0, 10], scores) == 0  # nothing unused: the model's end
    off = ConstrainedPicker(NewlineTokenizer(), unused.grammar, eos_id=0, coverage_nats=0)
    assert off.pick(swap_eth, [0, 10], scores) == 0


def test_a_draft_never_ends_the_output_while_a_request_value_is_unused(spans):
    swap_eth = [1, 2, 3, 4, 5]
    scores = torch.zeros(len(ScriptedTokenizer.WORDS))
    scores[0] = -1.0  # the model goes on ("\n"); the draft, which missed the second step, would end
    unused = ConstrainedPicker(
        NewlineTokenizer(), grammar("swap eth for usdc and stake 5 eth on lido", spans), eos_id=0
    )
    assert unused.pick(swap_eth, [10, 0], scores, draft=0) == 10
    covered = ConstrainedPicker(NewlineTokenizer(), grammar("swap eth for usdc", spans), eos_id=0)
    assert covered.pick(swap_eth, [10, 0], scores, draft=0) == 0


def test_model_alone_gets_no_coverage_nudge(spans):
    from brianft.infer import _pickers

    grammars = request_grammars(["wrap 1 eth"], spans)
    assert [p.coverage_nats for p in _pickers(ScriptedTokenizer(), grammars, DRAFT_TIEBREAK_NATS)] == [COVERAGE_NATS]
    assert [p.coverage_nats for p in _pickers(ScriptedTokenizer(), grammars, 0.0)] == [0.0]


def test_picker_takes_the_best_valid_token_and_notes_the_override(spans):
    picker = ConstrainedPicker(ScriptedTokenizer(), grammar("swap 1 eth for usdc", spans), eos_id=0)
    assert picker.pick([], [1, 2]) == 1 and picker.overrides == []
    # after "swap; token1=" the model prefers "base", which the request does not hold
    assert picker.pick([1, 2, 3, 4], [9, 5, 6]) == 5
    assert len(picker.overrides) == 1 and "'base'" in picker.overrides[0]
    # EOS is taken only where the output is whole
    assert picker.pick([1, 2, 3, 4], [0, 6]) == 6
    assert picker.pick([1, 2, 3, 4, 5], [0, 2]) == 0


def test_picker_looks_beyond_the_top_candidates_when_given_scores(spans):
    import torch

    picker = ConstrainedPicker(ScriptedTokenizer(), grammar("swap 1 eth for usdc", spans), eos_id=0)
    scores = torch.zeros(len(ScriptedTokenizer.WORDS))
    scores[6] = 5.0  # "usdc" is the best allowed value outside the candidates
    assert picker.pick([1, 2, 3, 4], [9, 8], scores) == 6 and not picker.gave_up
    # no scores and nothing valid: decoding goes on unconstrained, and says so
    assert picker.pick([1, 2, 3, 4], [9, 8]) == 9 and picker.gave_up
    assert "unchecked" in picker.overrides[-1]


class LongestMatchTokenizer:
    """Longest-match tokenization over a small vocabulary (characters outside it are dropped)."""

    VOCAB = ["<eos>", "transfer", ";", " ", "token1", "amount", "=", "dai", "chain", "main", "net", "ma", "in", "llory"]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.VOCAB[i] for i in ids)

    def __call__(self, text, add_special_tokens=False):
        ids, at = [], 0
        while at < len(text):
            match = max((w for w in self.VOCAB[1:] if text.startswith(w, at)), key=len, default=None)
            if match is None:
                at += 1
                continue
            ids.append(self.VOCAB.index(match))
            at += len(match)
        return {"input_ids": ids}


def test_picker_finishes_a_value_its_phrase_tokens_do_not_split_at(spans):
    """After "chain=ma" (the model wanted "mallory.eth" as the chain) the only way on is the rest
    of "mainnet", "in" + "net", though "mainnet" itself tokenizes as "main" + "net": the picker
    finds it instead of giving up and leaving the output unchecked."""
    import torch

    tokenizer = LongestMatchTokenizer()
    picker = ConstrainedPicker(tokenizer, grammar("wire 5 dai to mallory.eth on mainnet", spans), eos_id=0)
    generated = tokenizer("transfer; token1=dai; chain=ma")["input_ids"]
    assert tokenizer.decode(generated) == "transfer; token1=dai; chain=ma"
    choice = picker.pick(generated, [tokenizer.VOCAB.index("llory")], torch.zeros(len(tokenizer.VOCAB)))
    assert not picker.gave_up and tokenizer.VOCAB[choice] == "in"


REQUESTS = [
    "swap 2.5k USDC for eth on Arbitrum One",
    "send half my eth to alice.eth",
    "bal?",
    "bridge 100 usdt from ethereum to base and then stake 32 eth with lido",
]


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir", "tiny_gpt2_dir"])
def test_constrained_drafted_decoding_equals_constrained_generate(request, spans, fixture):
    """The draft-and-verify path under the grammar gives what transformers' generate gives with
    the same grammar as a logits processor: the constrained greedy output, whatever the draft,
    once drafts may not break close calls between actions.
    Random tiny models ramble, so the grammar is doing all the work here."""
    path = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    grammars = request_grammars(REQUESTS, spans)
    drafts = ["swap; token1=USDC; token2=eth; amount=2.5k", "", "balance", "none"]
    drafted = generate(
        model,
        tokenizer,
        REQUESTS,
        is_seq2seq=False,
        max_new_tokens=40,
        drafts=drafts,
        grammars=grammars,
        batch_size=3,
        draft_tiebreak=0.0,
    )
    prompts = [encode_prompt(tokenizer, text, False) for text in REQUESTS]
    pickers = [ConstrainedPicker(tokenizer, g, tokenizer.eos_token_id) for g in grammars]
    reference = [output.text for output in _hf_generate(model, tokenizer, prompts, 3, 40, pickers)]
    assert [out.text for out in drafted] == reference
    for out, allowed in zip(drafted, grammars, strict=True):
        unchecked = any("unchecked" in note for note in out.notes)
        assert unchecked or allowed.allows_prefix(out.text), out


def test_constrained_seq2seq_generation_stays_valid(tiny_t5_dir, spans):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval()
    grammars = request_grammars(REQUESTS, spans)
    outputs = generate(model, tokenizer, REQUESTS, is_seq2seq=True, max_new_tokens=30, grammars=grammars)
    for out, allowed in zip(outputs, grammars, strict=True):
        unchecked = any("unchecked" in note for note in out.notes)
        assert unchecked or allowed.allows_prefix(out.text), out
    assert any(out.text for out in outputs)


def test_grammars_must_match_the_requests(tiny_llama_dir, spans):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(ValueError, match="grammars"):
        generate(model, tokenizer, REQUESTS, is_seq2seq=False, grammars=request_grammars(REQUESTS[:1], spans))


@settings(max_examples=150, deadline=None)
@given(request_text=st.text(max_size=120), output=st.text(max_size=60))
def test_grammar_never_raises(request_text, output):
    """Any request builds a grammar, and any text gets an answer (the model's output can be
    anything); a whole output is always also a valid prefix."""
    for fmt in ("fields", "slots"):
        allowed = OutputGrammar.for_request(request_text, SPANS, fmt)
        assert allowed.allows_prefix("") and allowed.allows_end("none")
        assert allowed.allows_end(output) <= allowed.allows_prefix(output)


def test_a_repeat_that_cannot_be_avoided_is_allowed_rather_than_decoding_unchecked(spans):
    """Where an output has reached a line that can only end as a repeat ("wrap; token1=" after
    "wrap; token1=usdc" for "wrap usdc"; the grammar refuses such a start, but a caller may hand
    any text), the picker lets the repeat through, still under the grammar, instead of giving up."""
    picker = ConstrainedPicker(ScriptedTokenizer(), grammar("wrap usdc", spans), eos_id=0)
    assert not picker.grammar.repeats
    assert not picker.grammar.allows_prefix("wrap; token1=usdc\nwrap; token1=")
    so_far = [11, 2, 3, 4, 6, 10, 11, 2, 3, 4]  # "wrap; token1=usdc\nwrap; token1="
    assert picker.pick(so_far, [6], torch.zeros(len(ScriptedTokenizer.WORDS))) == 6
    assert picker.grammar.repeats and not picker.gave_up
    assert picker.grammar.allows_end("wrap; token1=usdc\nwrap; token1=usdc")
