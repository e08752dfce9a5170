"""Stanford Dogs, MobileNetV3-large (heavy head) + SRAP (avg,std), rates (0.5,0.5).

Reproduces the upstream SRAP_Dogs.py recipe (docs/upstream.md §5): 120 classes, 224px crops of 256x256
resizes with flips and brightness jitter, images in [0,1]; batch 64; SGD lr 0.1, momentum
0.9, weight decay 1e-4 on every parameter; 200 epochs with lr x0.1 after epochs 100, 150 and
180; cross-entropy; the checkpoint with the best validation top-1 is kept. Change the
architecture with e.g. --config.model.arch=mobilenetv2.
"""

from rap_flax.training import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.dataset = "stanford_dogs"
  config.data.image_size = 224
  config.model.arch = "mobilenetv3_large"
  config.model.attention = "srap"
  config.model.pool_types = ("avg", "std")
  config.model.rates = (0.5, 0.5)
  config.model.lightweight_head = False
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_epochs = 200.0
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.lr_schedule = "multistep"
  config.lr_milestones = (100, 150, 180)
  config.lr_decay_factor = 0.1
  return config
