"""Stanford Dogs, MobileNetV3-large (heavy head) + MRAP (avg,std,max), rates (0.3,0.5,0.2).

The upstream Dogs recipe of dogs_srap.py (docs/upstream.md §5) with the three-pattern gate of the MRAP
paper: top-n selections of 30% avg, 50% std and 20% max channel descriptors.
"""

import os

from rap_flax.training import config_lib


def get_config():
  config = config_lib.load_recipe(os.path.join(os.path.dirname(__file__), "dogs_srap.py"))
  config.model.attention = "mrap"
  config.model.pool_types = ("avg", "std", "max")
  config.model.rates = (0.3, 0.5, 0.2)
  return config
