"""Shared fixtures: tiny, randomly initialised models saved with their own tokenizers.

Nothing is downloaded. Each fixture is a directory that `transformers` loads with
`from_pretrained` (and `brianft.model.load_base_model` with `model.base=<dir>`): a 2-layer
model with hidden size 32 and a byte-level BPE tokenizer (~400 tokens, so any text can be
encoded) trained here on a few wallet requests. The model's vocab_size equals len(tokenizer).

Tokenizers mimic their real families:
- tiny_llama_dir: like SmolLM2 (ChatML chat template, bos <|im_start|>, eos <|im_end|>,
  no BOS added), but with *no pad token*, tied embeddings.
- tiny_falcon_dir, tiny_gpt2_dir: eos/bos <|endoftext|>, no pad token, no chat template;
  GPT-2 uses Conv1D layers.
- tiny_qwen2_dir: ChatML template, eos <|im_end|>, pad <|endoftext|> (pad != eos).
- tiny_t5_dir: encoder-decoder, pad <pad>, eos </s> appended to every encoded text, unk <unk>.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    FalconConfig,
    FalconForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

CORPUS = [
    "swap 2.5k USDC for eth on Arbitrum One and send it to Bob.eth",
    "bridge 100 usdt from ethereum to base",
    "send half my eth to alice.eth",
    "transfer 0.5 ETH to 0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045",
    "what is my balance of pepe on mainnet?",
    "approve unlimited dai for uniswap",
    "wrap 1 eth, then deposit 1 weth into aave v3",
    "borrow 500 usdc from compound and repay 200 dai",
    "stake 32 eth with lido; unstake 10 steth from rocket pool",
    "unwrap all my weth on optimism",
    "withdraw 1,500 usdc from aave on polygon",
    "what is the total supply of shib?",
    "buy $pepe with 0.1 eth on base",
    "how do I make an omelette?",
    "action: swap; token1=usdc; token2=eth; amount=2.5k; chain=Arbitrum One",
    '[{"action": "transfer", "token1": "ETH", "amount": "50%", "address": "bob.eth"}]',
    "none",
    "The quick brown fox jumps over the lazy dog. 0123456789",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Larger than the usual 0.02 so that a frozen tiny head yields logits LoRA can move: with
# 0.02 the loss of a 32-wide model barely leaves ln(vocab) whatever the adapter learns.
INIT_RANGE = 0.3
SIZE = {"hidden": 32, "intermediate": 64, "layers": 2, "heads": 4, "positions": 512}


def build_tokenizer(
    special: dict[str, str],
    *,
    extra: tuple[str, ...] = (),
    chat_template: str | None = None,
    append_eos: bool = False,
    vocab_size: int = 400,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on CORPUS with the given special tokens.

    `special` maps roles to tokens, e.g. {"eos_token": "</s>", "pad_token": "<pad>"}.
    """
    tokens = list(dict.fromkeys([*special.values(), *extra]))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    if append_eos:
        eos = special["eos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, backend.token_to_id(eos))]
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra)})
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def _ids(tokenizer, **roles: str) -> dict[str, int]:
    return {f"{role}_token_id": tokenizer.convert_tokens_to_ids(token) for role, token in roles.items()}


def _save(directory: Path, model, tokenizer) -> Path:
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    special = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
    tokenizer = build_tokenizer(special, chat_template=CHATML_TEMPLATE)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=SIZE["hidden"],
        intermediate_size=SIZE["intermediate"],
        num_hidden_layers=SIZE["layers"],
        num_attention_heads=SIZE["heads"],
        num_key_value_heads=2,
        max_position_embeddings=SIZE["positions"],
        initializer_range=INIT_RANGE,
        tie_word_embeddings=True,
        **_ids(tokenizer, bos="<|im_start|>", eos="<|im_end|>"),
    )
    torch.manual_seed(0)
    return _save(tmp_path_factory.mktemp("tiny-llama"), LlamaForCausalLM(config), tokenizer)


@pytest.fixture(scope="session")
def tiny_falcon_dir(tmp_path_factory) -> Path:
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    tokenizer = build_tokenizer(special)
    config = FalconConfig(
        vocab_size=len(tokenizer),
        hidden_size=SIZE["hidden"],
        num_hidden_layers=SIZE["layers"],
        num_attention_heads=SIZE["heads"],
        max_position_embeddings=SIZE["positions"],
        initializer_range=INIT_RANGE,
        **_ids(tokenizer, bos="<|endoftext|>", eos="<|endoftext|>"),
    )
    torch.manual_seed(0)
    return _save(tmp_path_factory.mktemp("tiny-falcon"), FalconForCausalLM(config), tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    tokenizer = build_tokenizer(special)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=SIZE["hidden"],
        n_layer=SIZE["layers"],
        n_head=SIZE["heads"],
        n_positions=SIZE["positions"],
        initializer_range=INIT_RANGE,
        **_ids(tokenizer, bos="<|endoftext|>", eos="<|endoftext|>"),
    )
    torch.manual_seed(0)
    return _save(tmp_path_factory.mktemp("tiny-gpt2"), GPT2LMHeadModel(config), tokenizer)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    tokenizer = build_tokenizer(special, extra=("<|im_start|>",), chat_template=CHATML_TEMPLATE)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=SIZE["hidden"],
        intermediate_size=SIZE["intermediate"],
        num_hidden_layers=SIZE["layers"],
        num_attention_heads=SIZE["heads"],
        num_key_value_heads=2,
        max_position_embeddings=SIZE["positions"],
        initializer_range=INIT_RANGE,
        tie_word_embeddings=False,
        **_ids(tokenizer, eos="<|im_end|>", pad="<|endoftext|>"),
    )
    torch.manual_seed(0)
    return _save(tmp_path_factory.mktemp("tiny-qwen2"), Qwen2ForCausalLM(config), tokenizer)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer = build_tokenizer(special, append_eos=True)
    pad_id = tokenizer.convert_tokens_to_ids("<pad>")
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=SIZE["hidden"],
        d_kv=8,
        d_ff=SIZE["intermediate"],
        num_layers=SIZE["layers"],
        num_decoder_layers=SIZE["layers"],
        num_heads=SIZE["heads"],
        relative_attention_num_buckets=8,
        feed_forward_proj="relu",
        decoder_start_token_id=pad_id,
        **_ids(tokenizer, pad="<pad>", eos="</s>"),
    )
    torch.manual_seed(0)
    return _save(tmp_path_factory.mktemp("tiny-t5"), T5ForConditionalGeneration(config), tokenizer)


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """A finished two-step training run of the tiny Llama (its outputs are nonsense, its shape is real)."""
    from brianft.config import load_config
    from brianft.train import train

    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    overrides = [
        f"model.base={tiny_llama_dir}",
        f"train.output_dir={run_dir}",
        "data.curated=false",
        "data.written=false",
        "data.synthetic_train=16",
        "data.synthetic_test=4",
        "train.batch_size=8",
        "train.max_steps=2",
        "train.eval_examples=2",
        "train.eval_batch_size=2",
        "train.max_new_tokens=8",
        "train.threads=1",
        "train.test_eval=false",
        "model.lora.r=4",
    ]
    train(load_config(None, overrides))
    return run_dir
