"""vision-ar: autoregressive image generation (tokenizers, AR transformers, samplers, evaluation)."""

__version__ = "0.1.0"
