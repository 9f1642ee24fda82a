from transformers import AutoTokenizer

from brianft.prompting import (
    IGNORE_INDEX,
    collate_for_generation,
    collate_for_training,
    encode_example,
    encode_prompt,
    length_grouped_batches,
)
from brianft.schema import Action, Example, Intent
from brianft.target import example_target

EXAMPLE = Example(
    prompt="swap 2.5k usdc for eth",
    intents=[Intent(action=Action.SWAP, token1="USDC", token2="ETH", amount="2500")],
    raw=[{"token1": "usdc", "token2": "eth", "amount": "2.5k"}],
)


def test_labels_supervise_exactly_the_target_and_eos(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    encoded = encode_example(tokenizer, EXAMPLE, is_seq2seq=False)
    prompt_len = len(encode_prompt(tokenizer, EXAMPLE.prompt, False))
    assert encoded.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    target_ids = encoded.labels[prompt_len:]
    assert target_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(target_ids[:-1]) == example_target(EXAMPLE) == "swap; token1=usdc; token2=eth; amount=2.5k"
    assert encoded.input_ids[prompt_len:] == target_ids


def test_no_double_bos_with_chat_template(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids = encode_prompt(tokenizer, "hi", is_seq2seq=False)
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant turns


def test_eos_stays_supervised_when_pad_is_eos(tiny_gpt2_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    pad_id = tokenizer.eos_token_id  # GPT-2 has no pad token: pad = eos
    short = encode_example(tokenizer, EXAMPLE, is_seq2seq=False)
    long = encode_example(tokenizer, EXAMPLE.model_copy(update={"prompt": EXAMPLE.prompt + " right now please"}), False)
    batch = collate_for_training([short, long], pad_id, is_seq2seq=False)
    row = batch["labels"][0].tolist()
    assert row[len(short.labels) - 1] == tokenizer.eos_token_id  # the target's EOS is a label
    assert all(label == IGNORE_INDEX for label in row[len(short.labels) :])  # padding is not
    assert batch["attention_mask"][0].sum() == len(short.input_ids)


def test_seq2seq_labels_are_the_target(tiny_t5_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    encoded = encode_example(tokenizer, EXAMPLE, is_seq2seq=True)
    assert encoded.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.labels, skip_special_tokens=True) == example_target(EXAMPLE)


def test_generation_batches_pad_on_the_left():
    batch = collate_for_generation([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_length_grouped_batches_are_complete_reproducible_and_grouped():
    lengths = [(i * 37) % 101 for i in range(500)]
    batches = length_grouped_batches(lengths, 16, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert batches == length_grouped_batches(lengths, 16, seed=1, epoch=0)
    assert batches != length_grouped_batches(lengths, 16, seed=1, epoch=1)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 15  # random batches would spread over ~90


def test_few_shot_examples_are_valid_and_in_no_data():
    """The zero-shot baseline's worked examples parse to canonical intents, and none of their
    requests is in the curated data or the default synthetic splits (no test leakage)."""
    from brianft.config import load_config
    from brianft.data.dataset import build_splits
    from brianft.data.io import normalized_prompt
    from brianft.normalize import Canonicalizer
    from brianft.prompting import FEW_SHOT_EXAMPLES
    from brianft.target import parse_output

    canonicalizer = Canonicalizer.default()
    for _, answer in FEW_SHOT_EXAMPLES:
        parsed = parse_output(answer)
        assert parsed.error is None, answer
        assert all(canonicalizer.intent(raw).intent is not None for raw in parsed.intents), answer
    splits = build_splits(load_config("configs/default.yaml").data, canonicalizer)
    known = {normalized_prompt(e.prompt) for part in (splits.train, splits.validation, splits.test) for e in part}
    assert not {normalized_prompt(q) for q, _ in FEW_SHOT_EXAMPLES} & known


def test_few_shot_prompt_holds_the_examples_as_chat_turns(tiny_llama_dir, tiny_t5_dir):
    from brianft.prompting import FEW_SHOT_EXAMPLES, build_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = build_prompt(tokenizer, "wrap 1 eth", False, few_shot=True)
    assert text.count("<|im_start|>assistant") == len(FEW_SHOT_EXAMPLES) + 1
    assert text.rstrip().endswith("<|im_start|>assistant") and "wrap 1 eth" in text
    assert all(answer in text for _, answer in FEW_SHOT_EXAMPLES)
    t5 = build_prompt(AutoTokenizer.from_pretrained(tiny_t5_dir), "wrap 1 eth", True, few_shot=True)
    assert t5.endswith("Request: wrap 1 eth Intents:")
    assert build_prompt(tokenizer, "wrap 1 eth", False) != text  # the fine-tuning prompt is unchanged
