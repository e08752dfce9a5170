"""rap_flax: SRAP / MRAP / MAFC attention for MobileNets in JAX/Flax.

    import rap_flax
    model = rap_flax.create_model("mobilenetv3_large", num_classes=120, attention="srap")
    variables = rap_flax.load_variables("model_best.pth", model)   # or a workdir, ...
    model, variables = rap_flax.load_model("/tmp/rap_flax_digits")  # a workdir knows its model

The names below load on first use, so `import rap_flax` stays cheap.
"""

import importlib
import os

# TensorFlow (tf.data, clu's TensorBoard writer): its C++ warnings go (a failed event-file write
# prints 8 lines of them; the error itself is reported on one); its load-time oneDNN notice is
# kept off stderr by rap_flax.data.tf_import. A user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_EXPORTS = {
    "ModelSpec": "rap_flax.spec",
    "create_model": "rap_flax.models",
    "from_config": "rap_flax.models",
    "list_models": "rap_flax.models",
    "list_attentions": "rap_flax.models",
    "load_model": "rap_flax.weights",
    "load_variables": "rap_flax.weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'rap_flax' has no attribute {name!r}")
