"""Embedded demo: MobileNetV1 (width 0.25, CIFAR stem) + SRAP (avg,std) on scikit-learn's digits.

The 1,797 8x8 digit images ship inside scikit-learn, upscaled to 16x16, so this trains on any
machine without downloads. It reproduces no paper number; it checks the whole pipeline
(model, SRAP gates, SGD recipe, checkpoints, evaluation) end to end in under 4 CPU minutes
and reaches >= 97% validation top-1 (`python benchmarks/demo_accuracy.py` measures 3 seeds).
16x16 rather than 32x32: a step costs a third as much, which buys 30 epochs instead of 15
in the same time, and the longer cosine schedule ends on a stable plateau.
"""

from rap_flax.training import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.dataset = "digits"
  config.data.image_size = 16
  config.model.arch = "mobilenetv1"
  config.model.attention = "srap"
  config.model.pool_types = ("avg", "std")
  config.model.rates = (0.5, 0.5)
  config.model.width_multiplier = 0.25
  config.model.cifar = True
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 30.0
  config.learning_rate = 0.1
  config.lr_schedule = "cosine"
  config.warmup_epochs = 1.0
  config.log_every_steps = 20
  config.checkpoint_every_steps = 200
  return config
