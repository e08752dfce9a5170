"""Architectures, the model registry, and attention-map extraction."""

from rap_flax.models.attention_maps import attention_maps
from rap_flax.models.registry import (create_model, from_config, list_attentions,
                                      list_models, spec_from_config)

__all__ = ["attention_maps", "create_model", "from_config", "list_attentions", "list_models",
           "spec_from_config"]
