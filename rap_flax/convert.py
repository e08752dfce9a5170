"""PyTorch <-> Flax weights for the upstream SRAP/MRAP/MAFC models (SPEC §4).

Reads the Dogs format ({"model_state_dict": ...}), the ImageNet format
({"state_dict": ...} with `module.` prefixes), bare state dicts and safetensors files.
Every key is checked: a checkpoint of another model fails with the missing,
unexpected and mis-shaped keys listed, never a partial load. Pickled code is never
executed (`torch.load(..., weights_only=True)`).

Command line (`python -m rap_flax.convert --help`):
  to-flax  --input model_best.pth   --output DIR   (orbax checkpoint of {params, batch_stats})
  to-torch --input DIR              --output model.pth | model.safetensors
with the model given by --config=configs/NAME.py or by --arch/--attention/... flags.
"""

import argparse
import os
import sys
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rap_flax.models.mobilenet import MobileNet

# Upstream module name of each gate, and of its children, per attention.
GATE_PREFIX = {"srap": "TOPIMAP", "mrap": "TOPIMAP", "mafc": "cbamm", "cbam": "cbam", "se": "se"}
_CHANNEL_MLP = {"mlp_hidden": "ChannelGate.mlp.1", "mlp_out": "ChannelGate.mlp.3"}
GATE_CHILDREN = {
    "TOPIMAP": {**_CHANNEL_MLP, "spatial_conv": "ChannelGate.spatialConv.conv",
                "spatial_bn": "ChannelGate.spatialConv.bn"},
    "cbamm": {**_CHANNEL_MLP, "spatial_conv": "SpatialGate.spatial.conv",
              "spatial_bn": "SpatialGate.spatial.bn"},
    "cbam": {**_CHANNEL_MLP, "spatial_conv": "SpatialGate.spatial.conv",
             "spatial_bn": "SpatialGate.spatial.bn"},
    "se": {"reduce": "conv1", "expand": "conv2"},
}
GATE_SCOPES = ("attention", "final_attention")
PARAM_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
STAT_LEAVES = {"mean": "running_mean", "var": "running_var",
               "num_batches_tracked": "num_batches_tracked"}


class CheckpointMismatchError(ValueError):
  """The checkpoint does not hold exactly the weights of the requested model."""


def torch_key(collection: str, path: tuple[str, ...], attention: str) -> str:
  """The upstream state-dict key of one Flax variable."""
  parts: list[str] = []
  modules, leaf = path[:-1], path[-1]
  gate_prefix = None
  for name in modules:
    if gate_prefix is not None:
      parts.append(GATE_CHILDREN[gate_prefix][name])
    elif name in GATE_SCOPES:
      gate_prefix = GATE_PREFIX[attention]
      parts.extend([gate_prefix] if name == "attention" else [name, gate_prefix])
    else:
      parts.append(name)
  leaves = PARAM_LEAVES if collection == "params" else STAT_LEAVES
  return ".".join(parts + [leaves[leaf]])


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # conv (kh, kw, in, out) -> (out, in, kh, kw)
    return np.transpose(array, (3, 2, 0, 1))
  if array.ndim == 2:  # dense (in, out) -> (out, in)
    return array.T
  return array


def _to_flax_layout(array: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
  if len(flax_shape) == 4 and array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if len(flax_shape) == 2 and array.ndim == 2:
    return array.T
  return array


def _template_input(model: MobileNet) -> jax.ShapeDtypeStruct:
  size = 32 if model.cifar else 224
  return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def variable_shapes(model: MobileNet) -> dict[str, Any]:
  """Shapes/dtypes of {"params", "batch_stats"} without computing anything."""
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                        _template_input(model))


def _flat_variables(variables: Mapping[str, Any]):
  for collection in ("params", "batch_stats"):
    for path, leaf in flax.traverse_util.flatten_dict(
        flax.core.unfreeze(variables[collection])).items():
      yield collection, path, leaf


def state_dict_to_variables(state_dict: Mapping[str, Any], model: MobileNet) -> dict:
  """Upstream state dict (numpy-convertible values) -> Flax {"params", "batch_stats"}."""
  # Copies: a torch state dict shares memory with the live module's buffers, which
  # a later train-mode forward in torch would otherwise change under our feet.
  state = {_strip_data_parallel(k): np.array(v.detach().cpu() if hasattr(v, "detach") else v)
           for k, v in state_dict.items()}
  flat = {"params": {}, "batch_stats": {}}
  missing, mismatched, used = [], [], set()
  for collection, path, template in _flat_variables(variable_shapes(model)):
    key = torch_key(collection, path, model.attention.name)
    if key not in state:
      missing.append(key)
      continue
    used.add(key)
    value = _to_flax_layout(state[key], template.shape)
    if value.shape != template.shape:
      mismatched.append(f"{key}: checkpoint {tuple(state[key].shape)}, model expects "
                        f"{tuple(_to_torch_layout(np.zeros(template.shape)).shape)}")
      continue
    flat[collection][path] = jnp.asarray(value, dtype=template.dtype)
  unexpected = sorted(set(state) - used)
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(_mismatch_report(model, missing, unexpected, mismatched))
  return {c: flax.traverse_util.unflatten_dict(v) for c, v in flat.items()}


def _mismatch_report(model, missing, unexpected, mismatched, limit: int = 12) -> str:
  def listing(title, keys):
    shown = "\n    ".join(keys[:limit])
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"  {title} ({len(keys)}):\n    {shown}{more}" if keys else ""
  sections = [listing("missing keys", missing), listing("unexpected keys", unexpected),
              listing("shape mismatches", mismatched)]
  return ("The checkpoint does not match the requested model "
          f"(arch={model.arch}, attention={model.attention.name}, "
          f"pool_types={model.attention.pool_types}, width_multiplier={model.width_multiplier}, "
          f"num_classes={model.num_classes}, cifar={model.cifar}, "
          f"lightweight_head={model.lightweight_head}). Pass the settings the checkpoint was "
          "trained with.\n" + "\n".join(s for s in sections if s))


def _strip_data_parallel(key: str) -> str:
  return key[len("module."):] if key.startswith("module.") else key


def variables_to_state_dict(variables: Mapping[str, Any], model: MobileNet) -> dict[str, np.ndarray]:
  """Flax variables -> upstream state dict of numpy arrays (torch layout)."""
  state = {}
  for collection, path, leaf in _flat_variables(variables):
    value = np.asarray(leaf)
    if path[-1] == "num_batches_tracked":
      value = value.astype(np.int64)
    state[torch_key(collection, path, model.attention.name)] = _to_torch_layout(value)
  return state


def to_torch_state_dict(variables: Mapping[str, Any], model: MobileNet):
  """Flax variables -> upstream state dict of torch.Tensor, loadable with strict=True."""
  import torch  # pylint: disable=g-import-not-at-top
  return {k: torch.from_numpy(np.array(v, order="C"))
          for k, v in variables_to_state_dict(variables, model).items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The model state dict stored in a .pth/.pt (any upstream format) or .safetensors file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No checkpoint file at {path!r}.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types
      raise ValueError(f"Could not read {path!r} as safetensors ({e}); the file may be "
                       "truncated or not a safetensors file.") from e
  import torch  # pylint: disable=g-import-not-at-top
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    if isinstance(e, __import__("pickle").UnpicklingError) or "weights_only" in str(e):
      raise ValueError(
          f"Refusing to load {path!r}: it contains pickled objects other than tensors and "
          "plain containers, and loading them could execute code. Re-save only the state "
          "dict (torch.save({'model_state_dict': model.state_dict()}, path)).") from e
    raise ValueError(f"Could not read {path!r} as a PyTorch checkpoint ({type(e).__name__}: "
                     f"{e}); the file may be truncated or not written by torch.save.") from e
  return _unwrap_checkpoint(checkpoint, path)


def _unwrap_checkpoint(checkpoint: Any, path: str) -> dict[str, np.ndarray]:
  if isinstance(checkpoint, dict):
    for wrapper in ("model_state_dict", "state_dict"):
      if isinstance(checkpoint.get(wrapper), dict):
        checkpoint = checkpoint[wrapper]
        break
  if not isinstance(checkpoint, dict) or not all(hasattr(v, "numpy") for v in checkpoint.values()):
    raise ValueError(f"{path!r} holds no state dict: expected {{'model_state_dict': ...}}, "
                     "{'state_dict': ...} or a dict of tensors.")
  return {k: v.detach().cpu().numpy() for k, v in checkpoint.items()}


def load_torch_checkpoint(path: str, model: MobileNet) -> dict:
  """Reads an upstream checkpoint (.pth/.pt/.safetensors) into Flax variables of `model`."""
  return state_dict_to_variables(read_state_dict(path), model)


def save_torch_checkpoint(variables: Mapping[str, Any], model: MobileNet, path: str) -> None:
  """Writes the upstream Dogs format (.pth) or a flat .safetensors file, atomically."""
  tmp = f"{path}.tmp-{os.getpid()}"
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: np.array(v, order="C")
               for k, v in variables_to_state_dict(variables, model).items()}, tmp)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    torch.save({"model_state_dict": to_torch_state_dict(variables, model)}, tmp)
  os.replace(tmp, path)


def save_flax_variables(variables: Mapping[str, Any], directory: str) -> None:
  """Writes {params, batch_stats} as an orbax checkpoint (atomic: orbax renames at the end)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  if os.path.exists(directory):
    raise FileExistsError(f"{directory} exists; choose a new output directory.")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, dict(variables))


def load_flax_variables(directory: str, model: MobileNet) -> dict:
  """Reads an orbax checkpoint written by `save_flax_variables` for `model`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No orbax checkpoint directory at {directory!r}.")
  target = variable_shapes(model)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(directory, target)
  except (ValueError, KeyError) as e:
    raise CheckpointMismatchError(
        f"The orbax checkpoint at {directory} does not match the requested model "
        f"(arch={model.arch}, attention={model.attention.name}, width_multiplier="
        f"{model.width_multiplier}, num_classes={model.num_classes}): {e}") from e


def _model_from_args(args: argparse.Namespace) -> MobileNet:
  from rap_flax import models  # pylint: disable=g-import-not-at-top
  if args.config:
    import importlib.util  # pylint: disable=g-import-not-at-top
    spec = importlib.util.spec_from_file_location("conversion_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    num_classes = args.num_classes or _dataset_num_classes(config)
    return models.create_model(num_classes=num_classes, **config.model.to_dict())
  if not args.arch or not args.num_classes:
    raise SystemExit("Describe the model: --config=configs/NAME.py, or --arch and "
                     "--num_classes (plus --attention, --pool_types, ... as trained).")
  return models.create_model(
      args.arch, args.num_classes, args.attention, args.pool_types.split(","),
      [float(r) for r in args.rates.split(",")], args.width_multiplier, args.cifar,
      args.lightweight_head)


def _dataset_num_classes(config) -> int:
  """From the dataset catalog when it lists the dataset: no need to have the data here."""
  from rap_flax import data  # pylint: disable=g-import-not-at-top
  from rap_flax.data import catalog  # pylint: disable=g-import-not-at-top
  entry = catalog.TFDS_DATASETS.get(config.dataset)
  return entry.num_classes if entry else data.get_dataset_info(config).num_classes


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m rap_flax.convert",
      description="Convert upstream PyTorch checkpoints to orbax (to-flax) and back (to-torch).")
  parser.add_argument("direction", choices=("to-flax", "to-torch"))
  parser.add_argument("--input", required=True,
                      help="to-flax: .pth/.pt/.safetensors file; to-torch: orbax directory")
  parser.add_argument("--output", required=True,
                      help="to-flax: new orbax directory; to-torch: .pth or .safetensors file")
  parser.add_argument("--config", help="ml_collections config file describing the model")
  parser.add_argument("--arch", help="mobilenetv1 | mobilenetv2 | mobilenetv3_large | mobilenetv3_small")
  parser.add_argument("--num_classes", type=int)
  parser.add_argument("--attention", default="srap")
  parser.add_argument("--pool_types", default="avg,std")
  parser.add_argument("--rates", default="0.5,0.5")
  parser.add_argument("--width_multiplier", type=float, default=1.0)
  parser.add_argument("--cifar", action="store_true")
  parser.add_argument("--lightweight_head", action="store_true")
  args = parser.parse_args(argv)
  model = _model_from_args(args)
  if args.direction == "to-flax":
    variables = load_torch_checkpoint(args.input, model)
    save_flax_variables(variables, args.output)
  else:
    variables = load_flax_variables(args.input, model)
    save_torch_checkpoint(variables, model, args.output)
  count = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["params"]))
  print(f"Converted {args.input} -> {args.output} ({model.arch} + {model.attention.name}, "
        f"{count:,} parameters).")


if __name__ == "__main__":
  main(sys.argv[1:])
