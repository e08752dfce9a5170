"""The PyTorch side: the upstream-layout models, torch checkpoint files and ONNX export.

Imported only where PyTorch is needed (install the `torch` extra: pip install '.[torch]');
nothing else in rap_flax imports torch.
"""

try:
  import torch  # noqa: F401  pylint: disable=unused-import
except ImportError as error:  # pragma: no cover - depends on the environment
  raise ImportError("rap_flax.pytorch needs PyTorch: pip install 'rap_flax[torch]' "
                    "(or pip install torch).") from error

from rap_flax.pytorch.models import MobileNet, create_model

__all__ = ["MobileNet", "create_model"]
