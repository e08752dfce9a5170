"""ImageNet-100 (the authors' ReIN100 subset of ImageNet-1k), MobileNet + SRAP (avg,std).

The subset of the MRAP paper's ImageNet-100 experiments (classes listed in
imagenet_subsets/ReIN100.txt), trained with the upstream ImageNet recipe (docs/upstream.md §5, which
gives no separate ImageNet-100 recipe): batch 256, SGD lr 0.1 momentum 0.9 weight decay
1e-4, lr x0.1 every 30 epochs, 100 epochs, 224px. The architecture is the config argument,
e.g. --config=configs/imagenet100_srap.py:mobilenetv2 (default mobilenetv1). For MRAP use
--config.model.attention=mrap --config.model.pool_types="('avg','std','max')"
--config.model.rates="(0.3,0.5,0.2)".
"""

import os

from rap_flax.training import config_lib


def get_config(arch: str = "mobilenetv1"):
  config = config_lib.load_recipe(os.path.join(os.path.dirname(__file__), "imagenet_mafc.py"), arch)
  config.data.dataset = "imagenet_rein100"
  config.model.attention = "srap"
  config.model.pool_types = ("avg", "std")
  config.model.rates = (0.5, 0.5)
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  return config
