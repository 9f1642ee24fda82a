"""brianft: fine-tune open language models with LoRA to extract validated wallet intents."""

__version__ = "0.1.0"
