"""Export a finished run as merged full weights that plain transformers loads (no peft)."""

from __future__ import annotations

import shutil
from pathlib import Path

from brianft.model import load_run

RUN_CONFIG_NAME = "brianft-run.yaml"


def export_merged(run_dir: Path, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Merge the run's LoRA adapter into its base model and save model + tokenizer."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; pass --overwrite to replace it")
    loaded = load_run(run_dir)
    merged = loaded.model.merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    loaded.tokenizer.save_pretrained(tmp)
    # what the weights were trained to write (target format, registries): Extractor.from_model_dir reads it
    shutil.copyfile(Path(run_dir) / "config.yaml", tmp / RUN_CONFIG_NAME)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
