"""Stanford Dogs, MobileNetV3-large (heavy head) + MRAP (avg,std,max), rates (0.3,0.5,0.2).

The upstream Dogs recipe of dogs_srap.py (SPEC §5) with the three-pattern gate of the MRAP
paper: top-n selections of 30% avg, 50% std and 20% max channel descriptors.
"""

from configs import dogs_srap


def get_config():
  config = dogs_srap.get_config()
  config.model.attention = "mrap"
  config.model.pool_types = ("avg", "std", "max")
  config.model.rates = (0.3, 0.5, 0.2)
  return config
