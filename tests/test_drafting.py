"""Draft-and-verify decoding gives exactly the model's greedy output, whatever the draft, in
fewer forward passes when the draft is right."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from brianft.drafting import DraftVerifyDecoder, PrefixCache, Row, _shared_prefix, draft_verify_generate
from brianft.infer import generate_texts, inference_dtype, prepare_for_inference
from brianft.model import backbone_and_head
from brianft.prompting import collate_for_generation, encode_prompt, encode_target

REQUESTS = [
    "swap 2.5k USDC for eth on Arbitrum One",
    "send half my eth to alice.eth",
    "bal?",
    "bridge 100 usdt from ethereum to base and then stake 32 eth with lido",
]
MAX_NEW = 24


def load(path):
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer


def reference(model, tokenizer, prompts):
    """transformers' own greedy generate, one request at a time (no padding at all)."""
    out = []
    for prompt in prompts:
        batch = collate_for_generation([prompt], tokenizer.pad_token_id)
        generated = model.generate(
            **batch, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )[0, len(prompt) :].tolist()
        out.append(
            generated[: generated.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in generated else generated
        )
    return out


class CountingBody(torch.nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body, self.calls = body, 0

        self.widest = 0  # most rows in one pass
        self.shapes = []  # (rows, tokens) fed in each pass

    @property
    def config(self):  # the decoder packs first passes only for bodies whose attention takes 4D masks
        return self.body.config

    def forward(self, **kwargs):
        self.calls += 1
        self.widest = max(self.widest, kwargs["input_ids"].shape[0])
        self.shapes.append(tuple(kwargs["input_ids"].shape))
        return self.body(**kwargs)


@pytest.fixture(params=["tiny_llama_dir", "tiny_qwen2_dir", "tiny_falcon_dir", "tiny_gpt2_dir"])
def tiny(request):
    model, tokenizer = load(request.getfixturevalue(request.param))
    prompts = [encode_prompt(tokenizer, text, False) for text in REQUESTS]
    return model, tokenizer, prompts, reference(model, tokenizer, prompts)


@pytest.fixture(params=[True, False], ids=["packed", "padded"])
def pack(request):
    return request.param


def prefix_passes(prompts) -> int:
    return int(_shared_prefix(prompts) > 0)


def test_shared_prefix_leaves_every_prompt_a_token():
    assert _shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert _shared_prefix([[1, 2], [1, 2]]) == 1
    assert _shared_prefix([[7], [1, 2]]) == 0


def run(model, tokenizer, prompts, drafts, **options):
    body, head = backbone_and_head(model)
    counting = CountingBody(body)
    out = draft_verify_generate(
        counting,
        head,
        prompts,
        drafts,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        max_new_tokens=MAX_NEW,
        **options,
    )
    return out, counting


def test_no_draft_equals_greedy_generate(tiny, pack):
    model, tokenizer, prompts, expected = tiny
    out, counted = run(model, tokenizer, prompts, [[] for _ in prompts], pack=pack)
    assert out == expected
    calls = counted.calls
    # one token per pass (EOS included), plus one pass over the prefix all prompts share
    assert calls == max(min(len(e) + 1, MAX_NEW) for e in expected) + prefix_passes(prompts)


def test_right_draft_is_accepted_in_one_pass(tiny, pack):
    model, tokenizer, prompts, expected = tiny
    drafts = [e + ([tokenizer.eos_token_id] if len(e) < MAX_NEW else []) for e in expected]
    out, counted = run(model, tokenizer, prompts, drafts, pack=pack)
    assert out == expected
    assert counted.calls == 1 + prefix_passes(prompts)


def test_wrong_or_partial_drafts_change_nothing_but_speed(tiny, pack):
    model, tokenizer, prompts, expected = tiny
    wrong = [encode_target(tokenizer, "swap; token1=eth; amount=1") for _ in prompts]
    partial = [e[: len(e) // 2] + [5, 6, 7] + e[len(e) // 2 :] for e in expected]  # right, wrong, then right again
    for drafts in (wrong, partial):
        out, _ = run(model, tokenizer, prompts, drafts, pack=pack)
        assert out == expected
    _, partial_run = run(model, tokenizer, prompts, partial, pack=pack)
    _, undrafted_run = run(model, tokenizer, prompts, [[] for _ in prompts], pack=pack)
    assert partial_run.calls < undrafted_run.calls  # the draft resynchronises after the inserted tokens


def test_batches_pool_their_unfinished_rows(tiny, pack):
    """Rows a batch's first pass leaves unfinished share later passes with other batches' rows,
    never more than `max_rows` at once, and every output stays the model's greedy output."""
    model, tokenizer, prompts, expected = tiny
    drafts = [e[:2] + [5, 6, 7] for e in expected]  # right, then wrong: every row straggles
    batches = [[3], [0, 2], [1]]
    one_by_one = [
        run(model, tokenizer, [prompts[i] for i in b], [drafts[i] for i in b], pack=pack)[1].calls for b in batches
    ]
    for max_rows in (1, 2, 3, 4):
        out, pooled = run(model, tokenizer, prompts, drafts, batches=batches, max_rows=max_rows, pack=pack)
        assert out == expected
        assert pooled.widest <= max(max_rows, 2)  # a batch of two starts whole, then waits for room
    if max(len(e) for e in expected) > 3:
        assert pooled.calls < sum(one_by_one)


def test_rows_admitted_while_others_decode_get_the_greedy_output(tiny, pack):
    """Continuous batching: rows start while earlier ones are still in the pool, and each row is
    final (done, greedy) as soon as it finishes, before the rows admitted after it."""
    model, tokenizer, prompts, expected = tiny
    body, head = backbone_and_head(model)
    decoder = DraftVerifyDecoder(
        body, head, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, max_new_tokens=MAX_NEW, max_rows=2,
        pack=pack,
    )  # fmt: skip
    right = [e + [tokenizer.eos_token_id] if len(e) < MAX_NEW else e for e in expected]
    drafts = [right[0], expected[1][:1] + [5, 6], right[2], []]  # rows 1 and 3 straggle
    rows = [Row(pending=list(p), draft=d) for p, d in zip(prompts, drafts, strict=True)]
    decoder.start(rows[:2])
    assert rows[0].done and rows[0].generated == expected[0]  # its draft was right: one pass
    assert decoder.busy == (not rows[1].done)
    decoder.advance()
    decoder.start(rows[2:])  # joins while row 1 may still be decoding
    assert rows[2].done and rows[2].generated == expected[2]
    decoder.finish()
    assert not decoder.busy
    assert [row.generated for row in rows] == expected


def test_the_shared_prefix_is_computed_once_and_cut_back_when_prompts_share_less(tiny):
    """A PrefixCache kept across decoders runs the prompts' common opening once; later batches
    copy it (no extra pass), a prompt that shares less cuts it back, and outputs stay greedy."""
    model, tokenizer, prompts, expected = tiny
    body, head = backbone_and_head(model)
    counting, prefix = CountingBody(body), PrefixCache()

    def decode(indices, prompt_list=prompts):
        decoder = DraftVerifyDecoder(
            counting, head, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
            max_new_tokens=MAX_NEW, max_rows=4, prefix=prefix,
        )  # fmt: skip
        rows = [Row(pending=list(prompt_list[i]), draft=[]) for i in indices]
        decoder.start(rows)
        decoder.finish()
        return [row.generated for row in rows]

    assert decode([0, 1]) == expected[:2]
    shared = _shared_prefix(prompts[:2])
    assert prefix.ids == prompts[0][:shared] and shared > 0
    calls = counting.calls
    assert decode([2, 3]) == expected[2:]
    assert counting.calls - calls == max(min(len(e) + 1, MAX_NEW) for e in expected[2:])  # no prefix pass
    assert len(prefix.ids) == min(shared, _shared_prefix(prompts))
    other = [[prompts[0][0] + 1, *prompts[0][1:]]]  # shares nothing: computed afresh
    assert decode([0], other) == reference(model, tokenizer, other)
    assert prefix.ids == other[0][:-1]


def test_max_new_tokens_is_respected(tiny, pack):
    model, tokenizer, prompts, _ = tiny
    long_draft = [list(range(10, 10 + 3 * MAX_NEW)) for _ in prompts]
    out, _ = run(model, tokenizer, prompts, long_draft, pack=pack)
    assert all(len(tokens) <= MAX_NEW for tokens in out)


def test_generate_texts_batched_with_drafts_matches_reference(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir)
    prompts = [encode_prompt(tokenizer, text, False) for text in REQUESTS]
    expected = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in reference(model, tokenizer, prompts)]
    drafts = ["swap; token1=USDC; token2=eth; amount=2.5k", "", "balance", "none"]
    for batch_size in (1, 3):
        texts = generate_texts(
            model, tokenizer, REQUESTS, is_seq2seq=False, batch_size=batch_size, max_new_tokens=MAX_NEW, drafts=drafts
        )
        assert texts == expected
    with pytest.raises(ValueError, match="drafts"):
        generate_texts(model, tokenizer, REQUESTS, is_seq2seq=False, drafts=["x"])


def test_prepare_for_inference_merges_and_casts(tiny_run_dir):
    from peft import PeftModel

    from brianft.model import load_run

    loaded = load_run(tiny_run_dir)
    assert isinstance(loaded.model, PeftModel)
    prompts = REQUESTS[:2]
    before = generate_texts(loaded.model, loaded.tokenizer, prompts, is_seq2seq=False, max_new_tokens=MAX_NEW)
    model = prepare_for_inference(loaded.model, "float32")
    assert not isinstance(model, PeftModel) and not any("lora" in name for name, _ in model.named_parameters())
    assert generate_texts(model, loaded.tokenizer, prompts, is_seq2seq=False, max_new_tokens=MAX_NEW) == before
    assert next(prepare_for_inference(model, "bfloat16").parameters()).dtype == torch.bfloat16


def test_inference_dtype_names():
    assert inference_dtype("float32", torch.device("cpu")) == torch.float32
    assert inference_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert inference_dtype("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="float16"):
        inference_dtype("float16", torch.device("cpu"))


def test_text_redraft_lines_up_text_not_tokens(tiny_llama_dir):
    from brianft.drafting import Row, _propose
    from brianft.infer import TextRedraft

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    redraft = TextRedraft(tokenizer, "stake; token1=eth; amount=1", "stop staking 1 eth on lido")
    # another action than the draft's, the rest of the draft still follows its end
    assert tokenizer.decode(redraft(ids("unstake"))) == "; token1=eth; amount=1"
    # inside a value the draft does not hold, the request's next words are proposed
    assert tokenizer.decode(redraft(ids("unstake; token1=eth; amount=1; protocol=li"))) == "do"
    assert redraft(ids("unstake; token1=eth; amount=1; protocol=zz")) == []
    # the row's redraft is used once the draft's own tokens no longer line up, capped in length
    row = Row(pending=[], draft=ids("balance"), redraft=redraft, generated=ids("unstake"))
    assert tokenizer.decode(_propose(row)) == tokenizer.decode(redraft(ids("unstake"))[:8])
    assert _propose(Row(pending=[], draft=[], generated=ids("xyz"))) == []


def test_first_pass_packs_requests_end_to_end(tiny):
    """Packed, the first pass feeds the four requests and their drafts in fewer rows than
    requests, with no row wider than the longest request or `PACKED_ROW_TOKENS`; the outputs are
    the model's greedy ones under both attention implementations that take a 4D mask."""
    from brianft.drafting import PACKED_ROW_TOKENS

    model, tokenizer, prompts, expected = tiny
    drafts = [e + ([tokenizer.eos_token_id] if len(e) < MAX_NEW else []) for e in expected]
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        body, head = backbone_and_head(model)
        counting = CountingBody(body)
        out = draft_verify_generate(
            counting, head, prompts, drafts, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
            max_new_tokens=MAX_NEW,
        )  # fmt: skip
        assert out == expected, implementation
        shapes = counting.shapes
        first = shapes[prefix_passes(prompts)]
        longest = max(len(p) + len(d) for p, d in zip(prompts, drafts, strict=True))
        assert first[0] < len(prompts) and first[1] <= max(longest, PACKED_ROW_TOKENS), shapes
