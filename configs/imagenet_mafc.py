"""ImageNet-1k, MobileNet + MAFC (avg,std): the upstream MAFAttention_main.py recipe.

docs/upstream.md §5: batch 256; SGD lr 0.1, momentum 0.9, weight decay 1e-4; lr x0.1 every 30 epochs;
100 epochs; random-resized-crop 224 + flip + mean/std normalisation, eval resize 256 + centre
crop 224; top-1/top-5. Published: MobileNetV1+MAFC 73.13 top-1 / 91.37 top-5 at epoch 100.
The architecture is the config argument (upstream -a MAFCV1/MAFCV2/MAFCV3):
  --config=configs/imagenet_mafc.py            MobileNetV1 (MAFCV1)
  --config=configs/imagenet_mafc.py:mobilenetv2
  --config=configs/imagenet_mafc.py:mobilenetv3_large
"""

from rap_flax.training import config_lib


def get_config(arch: str = "mobilenetv1"):
  config = config_lib.base_config()
  config.data.dataset = "imagenet2012"
  config.data.image_size = 224
  config.model.arch = arch
  config.model.attention = "mafc"
  config.model.pool_types = ("avg", "std")
  config.batch_size = 256
  config.eval_batch_size = 256
  config.num_epochs = 100.0
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.lr_schedule = "step"
  config.lr_step_epochs = 30
  config.lr_decay_factor = 0.1
  config.log_every_steps = 500
  config.checkpoint_every_steps = 2000
  return config
