"""Attention maps of every gate, read from the values the gates sow during the forward pass."""

import flax
import jax
import numpy as np


def attention_maps(model, variables, images) -> dict[str, dict[str, np.ndarray]]:
  """Per gate, keyed by block name ("stage3.unit1", "final_attention"), its maps (B, H, W).

  "spatial_weight" is the gate's spatial weight map (absent for SE, which has none) and
  "pixel_weight" the final per-pixel weight, i.e. the factor each position of the gated
  tensor is multiplied by, averaged over channels. Eval mode (running BN statistics).
  """
  _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))(
      variables, images)
  maps: dict[str, dict[str, np.ndarray]] = {}
  for path, (value,) in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(state.get("intermediates", {}))).items():
    *modules, kind = path
    block = ".".join(m for m in modules if m not in ("backbone", "attention"))
    maps.setdefault(block, {})[kind] = np.asarray(value)
  return maps
