"""Architectures and the model registry."""

from rap_flax.models.registry import create_model, list_attentions, list_models

__all__ = ["create_model", "list_attentions", "list_models"]
