"""CIFAR-100, MobileNetV3-large (CIFAR stem, heavy head) + SRAP (avg,std), rates (0.5,0.5).

The CIFAR option of the upstream scripts (docs/upstream.md §5): 32px images in [0,1], random crop with
4px padding and flips; the stride-1 CIFAR stem; trained with the upstream Dogs recipe (batch
64, SGD lr 0.1 momentum 0.9 weight decay 1e-4, 200 epochs, lr x0.1 after 100/150/180).
"""

import os

from rap_flax.training import config_lib


def get_config():
  config = config_lib.load_recipe(os.path.join(os.path.dirname(__file__), "dogs_srap.py"))
  config.data.dataset = "cifar100"
  config.data.image_size = 32
  config.model.cifar = True
  return config
