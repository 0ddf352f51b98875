"""lh-convert: take a pretrained Hugging Face LLM to long context with Lighthouse Attention."""

__version__ = "0.1.0"
