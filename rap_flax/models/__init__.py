"""Architectures, the model registry, and attention-map extraction."""

from rap_flax.models.attention_maps import attention_maps
from rap_flax.models.registry import create_model, list_attentions, list_models

__all__ = ["attention_maps", "create_model", "list_attentions", "list_models"]
