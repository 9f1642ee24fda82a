"""The whole training pipeline on tiny randomly initialised models, on the CPU."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from brianft.config import ConfigError, load_config
from brianft.train import RunDirError, autocast_bf16, train


def tiny_config(base_dir, output_dir, *overrides):
    return load_config(
        None,
        [
            f"model.base={base_dir}",
            f"train.output_dir={output_dir}",
            "data.curated=false",
            "data.written=false",
            "data.synthetic_train=64",
            "data.synthetic_test=8",
            "train.batch_size=8",
            "train.max_steps=40",
            "train.lr=3e-2",
            "train.warmup_ratio=0",
            "train.eval_examples=4",
            "train.eval_batch_size=4",
            "train.max_new_tokens=12",
            "train.save_every=20",
            "train.threads=1",
            "model.lora.r=8",
            *overrides,
        ],
    )


def losses(run_dir):
    return [h["loss"] for h in json.loads((run_dir / "history.json").read_text())]


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_falcon_dir", "tiny_gpt2_dir", "tiny_t5_dir"])
def test_tiny_models_train_end_to_end(fixture, request, tmp_path):
    base = request.getfixturevalue(fixture)
    run_dir = tmp_path / "run"
    metrics = train(tiny_config(base, run_dir))
    history = losses(run_dir)
    assert len(history) == 40
    assert sum(history[-4:]) / 4 < sum(history[:4]) / 4 * 0.9, history  # it learns
    for name in ("config.yaml", "metrics.json", "history.json", "curves.png", "eval_report.md", "README.md"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "tensorboard").is_dir()
    assert metrics["steps"] == 40 and "test" in metrics and metrics["test"]["examples"] > 0
    bf16 = autocast_bf16(tiny_config(base, run_dir).train.bf16, torch.device("cpu"))
    assert metrics["precision"] == ("bfloat16 autocast" if bf16 else "float32")


def test_finished_run_is_never_overwritten(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(tiny_llama_dir, run_dir, "train.max_steps=2", "train.test_eval=false")
    train(config)
    before = (run_dir / "metrics.json").read_text()
    with pytest.raises(RunDirError, match="finished run"):
        train(config)
    with pytest.raises(RunDirError, match="finished run"):
        train(config, resume=True)
    assert (run_dir / "metrics.json").read_text() == before
    train(config, overwrite=True)


def test_resume_reproduces_the_uninterrupted_run(tiny_llama_dir, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(tiny_config(tiny_llama_dir, straight, "train.test_eval=false"))

    interrupted = tmp_path / "interrupted"
    import brianft.train as train_module

    def crash_after_first_checkpoint(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_prune_checkpoints", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_llama_dir, interrupted, "train.test_eval=false"))
    assert (interrupted / "checkpoints" / "step-000020" / "state.json").exists()
    assert not (interrupted / "metrics.json").exists()
    monkeypatch.undo()
    with pytest.raises(RunDirError, match="--resume"):
        train(tiny_config(tiny_llama_dir, interrupted, "train.test_eval=false"))
    train(tiny_config(tiny_llama_dir, interrupted, "train.test_eval=false"), resume=True)

    assert losses(interrupted) == pytest.approx(losses(straight), rel=1e-4)
    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(interrupted / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_saved_adapter_reloads_and_predicts_identically(tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from brianft.export import export_merged
    from brianft.infer import generate_texts
    from brianft.model import load_run

    run_dir = tmp_path / "run"
    train(tiny_config(tiny_llama_dir, run_dir, "train.test_eval=false"))
    requests = ["swap 1 eth for usdc on base", "send 5 dai to bob.eth"]
    loaded = load_run(run_dir)
    ours = generate_texts(loaded.model, loaded.tokenizer, requests, is_seq2seq=False, max_new_tokens=12)

    # plain peft, no brianft involved in loading the adapter
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), run_dir / "adapter")
    assert generate_texts(plain, loaded.tokenizer, requests, is_seq2seq=False, max_new_tokens=12) == ours

    merged_dir = export_merged(run_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert generate_texts(merged, loaded.tokenizer, requests, is_seq2seq=False, max_new_tokens=12) == ours
    with pytest.raises(FileExistsError):
        export_merged(run_dir, merged_dir)


def test_slots_format_trains_and_is_decoded_in_its_format(tiny_llama_dir, tmp_path):
    """A run trained on the `slots` format keeps it: its extractor drafts and constrains in
    slots, and so does a merged export of it."""
    from brianft.data.dataset import build_splits
    from brianft.export import export_merged
    from brianft.extract import Extractor
    from brianft.normalize import Canonicalizer
    from brianft.prompting import encode_example

    run_dir = tmp_path / "run"
    config = tiny_config(tiny_llama_dir, run_dir, "data.target_format=slots")
    example = next(e for e in build_splits(config.data, Canonicalizer.default()).train if e.intents)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    labels = [t for t in encode_example(tokenizer, example, False, "slots").labels if t >= 0]
    assert "|" in tokenizer.decode(labels) and "=" not in tokenizer.decode(labels)

    train(config)
    history = losses(run_dir)
    assert sum(history[-4:]) < sum(history[:4]) * 0.9, history
    assert load_config(run_dir / "config.yaml").data.target_format == "slots"
    requests = ["swap 1 eth for usdc on base", "send 5 dai to bob.eth", "wrap 2 eth"]
    results = Extractor.from_run(run_dir, max_new_tokens=16).extract_batch(requests)
    outputs = [r.output for r in results]
    assert all(";" not in (o or "") and "=" not in (o or "") for o in outputs), outputs
    merged = Extractor.load(export_merged(run_dir, tmp_path / "merged"), max_new_tokens=16)
    assert [r.to_dict() for r in merged.extract_batch(requests)] == [r.to_dict() for r in results]


@pytest.mark.slow
def test_torchrun_two_processes_train_one_run(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        "-m", "brianft", "train",
        "--set", f"model.base={tiny_llama_dir}", "--output-dir", str(run_dir),
        "--set", "data.curated=false", "--set", "data.written=false",
        "--set", "data.synthetic_train=64", "--set", "data.synthetic_test=8",
        "--set", "train.batch_size=4", "--set", "train.max_steps=4", "--set", "train.eval_examples=2",
        "--set", "train.max_new_tokens=8", "--set", "train.threads=1", "--set", "model.lora.r=8",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0/2 done: 4 steps" in result.stderr and "rank 1/2 done: 4 steps" in result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]


@pytest.mark.slow
def test_real_bundled_model_trains_a_few_steps(tmp_path):
    """The real loading path: bundled GGUF -> cached fp32 weights -> LoRA -> steps -> adapter."""
    run_dir = tmp_path / "real"
    config = load_config(
        "configs/default.yaml",
        [
            f"train.output_dir={run_dir}",
            "data.curated=false",
            "data.written=false",
            "data.synthetic_train=24",
            "data.synthetic_test=4",
            "train.batch_size=4",
            "train.max_steps=3",
            "train.eval_examples=2",
            "train.max_new_tokens=8",
            "train.test_eval=false",
        ],
    )
    metrics = train(config)
    assert "smollm2-135m-instruct" in metrics["base_model"]
    history = losses(run_dir)
    assert len(history) == 3 and all(0 < loss < 20 for loss in history)
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size > 100_000


def test_supervised_loss_equals_full_sequence_cross_entropy(tiny_llama_dir):
    """Logits only at supervised positions (bucketed rows included) give the textbook loss."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brianft.prompting import collate_for_training, encode_example
    from brianft.schema import Action, Example, Intent
    from brianft.train import supervised_loss_sum

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    examples = [
        Example(
            prompt="send 1 eth to bob.eth",
            intents=[Intent(action=Action.TRANSFER, token1="ETH", amount="1", address="bob.eth")],
        ),
        Example(prompt="what is a rollup?", intents=[]),
    ]
    batch = collate_for_training([encode_example(tokenizer, e, False) for e in examples], tokenizer.eos_token_id, False)
    ours = supervised_loss_sum(model, batch, is_seq2seq=False)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum")
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)


def test_training_attention_is_eager_on_a_cpu_unless_configured(tiny_llama_dir):
    """The CPU default (`auto`) trains with plain matmul-softmax attention, faster than the fused
    kernel's backward on short sequences; other devices keep the model's own; a choice is honoured."""
    from transformers import AutoModelForCausalLM

    from brianft.train import set_training_attention

    def implementation(attention, device):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa")
        set_training_attention(model, attention, torch.device(device))
        return model.config._attn_implementation

    assert implementation("auto", "cpu") == "eager"
    assert implementation("auto", "meta") == "sdpa"  # not a CPU: untouched
    assert implementation("sdpa", "cpu") == "sdpa"
    with pytest.raises(ConfigError, match="attention"):
        load_config(None, ["train.attention=flash"])


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_follows_native_support_and_a_forced_emulated_bf16_warns(monkeypatch, native):
    """`auto` trains in bf16 only where the CPU computes it natively; emulated bf16 (an AVX2-only
    CPU) is many times slower than float32, so forcing it is honoured with a warning."""
    import warnings

    import brianft.train as train_module

    monkeypatch.setattr("brianft.infer.cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert train_module.autocast_bf16("auto", cpu) is native
    assert train_module.autocast_bf16(False, cpu) is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train_module.autocast_bf16(True, cpu) is True
    assert [str(w.message) for w in caught if "emulated" in str(w.message)] == ([] if native else [
        "train.bf16=true on a cpu without native bfloat16: it is emulated and can be many times slower than"
        " float32; set train.bf16=auto (or false)"
    ])  # fmt: skip
    assert load_config(None, []).train.bf16 == "auto"
    assert load_config(None, ["train.bf16=false"]).train.bf16 is False
    with pytest.raises(ConfigError, match="bf16"):
        load_config(None, ["train.bf16=sometimes"])


def test_neftune_noise_is_bounded_and_only_while_training(tiny_llama_dir):
    """NEFTune perturbs the input embeddings by at most alpha / sqrt(length x width) in training
    mode; generation (eval mode) sees the clean embeddings; training with it still learns."""
    import math

    from transformers import AutoModelForCausalLM

    from brianft.train import add_embedding_noise

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    embeddings = model.get_input_embeddings()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    clean = embeddings(ids).detach()
    handle = add_embedding_noise(model, 5.0)
    model.train()
    noise = (embeddings(ids) - clean).abs()
    bound = 5.0 / math.sqrt(ids.size(1) * clean.size(-1))
    assert 0 < noise.max() <= bound + 1e-7
    model.eval()
    assert torch.equal(embeddings(ids), clean)
    handle.remove()
    with pytest.raises(ConfigError, match="neftune_alpha"):
        load_config(None, ["train.neftune_alpha=-1"])


def test_training_with_neftune_learns(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(tiny_llama_dir, run_dir, "train.neftune_alpha=5", "train.test_eval=false"))
    history = losses(run_dir)
    assert sum(history[-4:]) / 4 < sum(history[:4]) / 4 * 0.9, history


def test_best_checkpoint_is_the_latest_of_the_best_scores(tmp_path, monkeypatch):
    from brianft import train

    scores = iter([0.5, 0.75, 0.75, 0.5])
    monkeypatch.setattr(
        train, "evaluate_examples", lambda *a, **k: ({"exact_match": next(scores), "action_accuracy": 1.0}, [])
    )

    class Model:
        saved_at: list[int] = []

        def save_pretrained(self, path):
            self.saved_at.append(state.step)

    class Writer:
        def add_scalar(self, *args):
            pass

    config = SimpleNamespace(train=SimpleNamespace(output_dir=str(tmp_path)))
    state, model = train.TrainState(), Model()
    for step in (10, 20, 30, 40):
        state.step = step
        train._evaluate_and_keep_best(model, None, ["v"], None, config, False, state, train.Distributed(), Writer())
    assert (state.best_step, state.best_exact_match) == (30, 0.75)  # the tie at step 30 wins; 40 is worse
    assert model.saved_at == [10, 20, 30]


def test_validation_while_training_scores_the_model_alone(monkeypatch):
    """The checkpoint is chosen on the model's own outputs; the test split is scored as served."""
    from brianft import train
    from brianft.config import Config
    from brianft.constrain import DRAFT_TIEBREAK_NATS
    from brianft.infer import Generated
    from brianft.normalize import Canonicalizer
    from brianft.schema import Example

    margins = []
    monkeypatch.setattr(
        train, "generate", lambda *a, **k: margins.append(k["draft_tiebreak"]) or [Generated(text="none")]
    )
    examples = [Example(prompt="what is a rollup?", intents=[])]
    for alone in (True, False):
        scores, _ = train.evaluate_examples(
            None, None, examples, Canonicalizer.default(), Config(), False, model_alone=alone
        )
        assert scores["exact_match"] == 1.0
    assert margins == [0.0, DRAFT_TIEBREAK_NATS]


def test_an_output_cut_at_the_token_limit_scores_as_a_failure(monkeypatch):
    """Scoring while training decodes as the Extractor serves: a cut output is no plan, even where
    what was written so far would parse (and here even match the label)."""
    from brianft import train
    from brianft.config import Config
    from brianft.infer import Generated
    from brianft.normalize import Canonicalizer
    from brianft.schema import Example, Intent

    example = Example(prompt="wrap 1 eth", intents=[Intent(action="wrap", token1="ETH", amount="1")])
    for cut, expected in ((False, 1.0), (True, 0.0)):
        output = Generated(text="wrap; token1=eth; amount=1", cut=cut)
        monkeypatch.setattr(train, "generate", lambda *a, output=output, **k: [output])
        scores, predictions = train.evaluate_examples(None, None, [example], Canonicalizer.default(), Config(), False)
        assert scores["exact_match"] == expected
        assert (predictions[0].error is not None) == cut


def test_validation_sample_spans_the_whole_split_in_split_order():
    """The split is stored by source; scoring its first k requests while training chose the
    checkpoint on curated requests alone. The sample is seeded, ordered as the split, and mixed."""
    from brianft.train import validation_sample

    split = [("curated", i) for i in range(80)] + [("written", i) for i in range(250)]
    sample = validation_sample(split, 64, seed=0)
    assert len(sample) == 64 == len(set(sample))
    assert sample == sorted(sample, key=split.index)
    assert sample == validation_sample(split, 64, seed=0)
    assert sample != validation_sample(split, 64, seed=1)
    written = sum(source == "written" for source, _ in sample)
    assert 32 <= written <= 62  # 250 of 330 are written: about 48 expected, not 0
    assert validation_sample(split[:10], 64, seed=0) == split[:10]
