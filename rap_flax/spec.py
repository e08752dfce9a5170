"""The models, framework-free: architecture tables, gates, validation and the unit plan.

Everything that defines *which* network a name stands for lives here, once: the Flax models
(`rap_flax.models`), the PyTorch models (`rap_flax.pytorch`) and the weight-key mapping
(`rap_flax.weights`) all derive from it. The upstream behaviour it encodes is written down in
docs/upstream.md.

    spec = ModelSpec("mobilenetv3_large", num_classes=120, attention="srap")
    for stage in spec.plan().stages:
      for unit in stage: ...   # channels, kernel, stride, activation, gated
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping, Protocol, Sequence, Union

POOL_TYPES = ("avg", "max", "std")


@dataclasses.dataclass(frozen=True)
class Gate:
  """An attention gate: where it sits, the upstream (PyTorch) names of its weights, and the
  module that implements it in each framework.

  `flax_module` and `torch_module` are "package.module:Class" paths, imported only when a
  model with this gate is built, so this file stays framework-free. The Flax class is built
  as `Class(model_spec=..., name=...)` and called as `gate(x, train)` on NHWC tensors; the
  PyTorch class as `Class(model_spec, channels)` and called on NCHW tensors. Both hold
  their weights at the paths `children` maps (Flax child -> upstream sub-module path).
  """
  name: str
  upstream_name: str | None  # module name of the gate inside a unit (None: no gate)
  after_projection: bool = False  # on a unit's output (MAFC), else after the depthwise conv
  uses_pool_types: bool = False
  uses_rates: bool = False
  children: Mapping[str, str] = dataclasses.field(default_factory=dict)
  flax_module: str | None = None
  torch_module: str | None = None


def import_object(path: str) -> Any:
  """The object a "package.module:Name" path names (a gate's framework module)."""
  module_name, _, attribute = path.partition(":")
  return getattr(importlib.import_module(module_name), attribute)


GATES: dict[str, Gate] = {}


def register_gate(gate: Gate) -> Gate:
  """Makes `gate` available as ModelSpec(attention=gate.name) in both frameworks."""
  if gate.name in GATES and GATES[gate.name] != gate:
    raise ValueError(f"A different gate is already registered as {gate.name!r}.")
  if (gate.upstream_name is None) != (gate.flax_module is None) or (
      (gate.flax_module is None) != (gate.torch_module is None)):
    raise ValueError(f"Gate {gate.name!r}: give upstream_name, flax_module and torch_module "
                     "together (or none of them, for no gate).")
  GATES[gate.name] = gate
  return gate


_FLAX = "rap_flax.layers.attention:"
_TORCH = "rap_flax.pytorch.gates:"
_CHANNEL_MLP = {"mlp_hidden": "ChannelGate.mlp.1", "mlp_out": "ChannelGate.mlp.3"}
_SPATIAL_GATE = {"spatial_conv": "SpatialGate.spatial.conv", "spatial_bn": "SpatialGate.spatial.bn"}
_RAP = Gate("srap", "TOPIMAP", uses_pool_types=True, uses_rates=True,
            children={**_CHANNEL_MLP, "spatial_conv": "ChannelGate.spatialConv.conv",
                      "spatial_bn": "ChannelGate.spatialConv.bn"},
            flax_module=_FLAX + "ResidualAttentivePatterns", torch_module=_TORCH + "RAPGate")
for _gate in (
    Gate("none", None),
    _RAP,
    # MRAP is the same module upstream; its own name lets configs say what the paper says.
    dataclasses.replace(_RAP, name="mrap"),
    Gate("mafc", "cbamm", after_projection=True, uses_pool_types=True,
         children={**_CHANNEL_MLP, **_SPATIAL_GATE}, flax_module=_FLAX + "MAFC",
         torch_module=_TORCH + "MAFCGate"),
    Gate("se", "se", children={"reduce": "conv1", "expand": "conv2"},
         flax_module=_FLAX + "SqueezeExcite", torch_module=_TORCH + "SEGate"),
    Gate("cbam", "cbam", children={**_CHANNEL_MLP, **_SPATIAL_GATE}, flax_module=_FLAX + "CBAM",
         torch_module=_TORCH + "CBAMGate"),
):
  register_gate(_gate)
ATTENTIONS = tuple(GATES)  # the built-in gates; GATES also holds those registered later
# The gate BatchNorms use PyTorch momentum 0.01 upstream, the backbone ones 0.1.
BN_MOMENTUM = 0.1
GATE_BN_MOMENTUM = 0.01
SPATIAL_KERNEL = 7
MLP_REDUCTION = 16


@dataclasses.dataclass(frozen=True)
class Arch:
  """The tables that define one backbone; per-stage lists of per-unit values."""
  init_channels: int
  init_activation: str
  channels: tuple[tuple[int, ...], ...]
  strides: tuple[int, ...]  # of each stage's first unit
  cifar_strides: tuple[int, ...]  # with the stride-1 stem for 32x32 inputs
  activations: tuple[str, ...]
  mids: tuple[tuple[int, ...], ...] | None = None  # None: separable (MobileNetV1) units
  kernels: tuple[int, ...] | None = None  # None: 3x3 everywhere
  gated: tuple[tuple[int, ...], ...] | None = None  # 1 where a unit has a gate; None: all
  # 1x1 conv + BN after the stages (V2: 1280, V3: 960/576); scaled only when w > 1.
  final_channels: int | None = None
  final_activation: str = "relu6"
  # V3 heavy head: 1x1 conv (no BN, no bias) + hswish after the pool; never scaled.
  head_channels: int | None = None
  final_gate: bool = False  # V3-small: a gate on the final conv's output


ARCHS: dict[str, Arch] = {
    "mobilenetv1": Arch(
        init_channels=32, init_activation="relu",
        channels=((64,), (128, 128), (256, 256), (512,) * 6, (1024, 1024)),
        strides=(1, 2, 2, 2, 2), cifar_strides=(1, 1, 2, 2, 2), activations=("relu",) * 5),
    "mobilenetv2": Arch(
        init_channels=32, init_activation="relu6",
        channels=((16,), (24, 24), (32, 32, 32), (64, 64, 64, 64, 96, 96, 96),
                  (160, 160, 160, 320)),
        mids=((32,), (96, 144), (144, 192, 192), (192, 384, 384, 384, 384, 576, 576),
              (576, 960, 960, 960)),
        strides=(1, 2, 2, 2, 2), cifar_strides=(1, 1, 2, 2, 2), activations=("relu6",) * 5,
        final_channels=1280, final_activation="relu6"),
    "mobilenetv3_large": Arch(
        init_channels=16, init_activation="hswish",
        channels=((16,), (24, 24), (40, 40, 40), (80, 80, 80, 80, 112, 112), (160, 160, 160)),
        mids=((16,), (64, 72), (72, 120, 120), (240, 200, 184, 184, 480, 672),
              (672, 960, 960)),
        strides=(1, 2, 2, 2, 2), cifar_strides=(1, 1, 2, 2, 2),
        kernels=(3, 3, 5, 3, 5), activations=("relu", "relu", "relu", "hswish", "hswish"),
        gated=((0,), (0, 0), (1, 1, 1), (0, 0, 0, 0, 1, 1), (1, 1, 1)),
        final_channels=960, final_activation="hswish", head_channels=1280),
    "mobilenetv3_small": Arch(
        init_channels=16, init_activation="hswish",
        channels=((16,), (24, 24), (40, 40, 40, 48, 48), (96, 96, 96)),
        mids=((16,), (72, 88), (96, 240, 240, 120, 144), (288, 576, 576)),
        strides=(2, 2, 2, 2), cifar_strides=(1, 2, 2, 2),
        kernels=(3, 3, 5, 5), activations=("relu", "relu", "hswish", "hswish"),
        gated=((1,), (0, 0), (1, 1, 1, 1, 1), (1, 1, 1)),
        final_channels=576, final_activation="hswish", head_channels=1024, final_gate=True),
}


def make_divisible(value: float, divisor: int = 8) -> int:
  """The MobileNet channel rounding (SE's reduced width)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def hidden_width(channels: int) -> int:
  """Width of the gates' channel MLP: C // 16, or 1 when that is 0 (upstream C // C)."""
  return channels // MLP_REDUCTION or 1


def top_n_counts(channels: int, rates: Sequence[float]) -> tuple[int, ...]:
  """How many of the largest values each pool type contributes to the SRAP/MRAP vector.

  All but the last take Python's truncating `int(rate * channels)` of the float product
  (int(0.29 * 100) == 28); the last takes the rest, so its own rate is never used.
  """
  counts = [int(rate * channels) for rate in rates[:-1]]
  return (*counts, channels - sum(counts))


@dataclasses.dataclass(frozen=True)
class Unit:
  """One unit of a backbone (`stage{stage}.unit{index}` upstream), with its channels."""
  stage: int
  index: int
  in_channels: int
  mid_channels: int | None  # None: a MobileNetV1 separable unit (depthwise on the input)
  out_channels: int
  kernel_size: int
  stride: int
  activation: str
  gated: bool

  @property
  def name(self) -> str:
    return f"stage{self.stage}.unit{self.index}"

  @property
  def residual(self) -> bool:
    return self.stride == 1 and self.in_channels == self.out_channels

  def gate_channels(self, gate: Gate) -> int:
    if gate.after_projection:
      return self.out_channels
    return self.in_channels if self.mid_channels is None else self.mid_channels


@dataclasses.dataclass(frozen=True)
class Plan:
  """The whole network with concrete channel counts: what both frameworks build."""
  init_channels: int
  init_activation: str
  init_stride: int
  stages: tuple[tuple[Unit, ...], ...]
  final_name: str | None  # "final_conv" (V2) or "final_conv1" (V3), None for V1
  final_channels: int | None
  final_activation: str
  final_gate: bool
  head_channels: int | None  # V3 heavy head after the pool (None when lightweight)
  features: int  # classifier input channels


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Which network: architecture, classes and gate. Validated on construction.

  `pool_types` and `rates` configure srap/mrap; mafc uses `pool_types` only; none, se and
  cbam use neither (they are normalised to their defaults, so two specs that build the
  same network compare equal).
  """
  arch: str
  num_classes: int
  attention: str = "srap"
  pool_types: tuple[str, ...] = ("avg", "std")
  rates: tuple[float, ...] | None = (0.5, 0.5)
  width_multiplier: float = 1.0
  cifar: bool = False  # stride-1 stem for 32x32 inputs
  lightweight_head: bool = False  # MobileNetV3 without the post-pool 1280/1024 conv

  def __post_init__(self):
    set_field = lambda name, value: object.__setattr__(self, name, value)
    if self.arch not in ARCHS:
      raise ValueError(f"Unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}.")
    if self.attention not in GATES:
      raise ValueError(f"Unknown attention {self.attention!r}; choose one of {tuple(GATES)}.")
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or (
        self.num_classes < 1):
      raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}.")
    if not self.width_multiplier > 0:
      raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier!r}.")
    set_field("width_multiplier", float(self.width_multiplier))
    set_field("cifar", bool(self.cifar))
    set_field("lightweight_head", bool(self.lightweight_head))
    gate = GATES[self.attention]
    if gate.uses_pool_types:
      set_field("pool_types", tuple(self.pool_types))
      _validate_pool_types(self.pool_types)
    else:
      set_field("pool_types", ModelSpec.pool_types)
    if gate.uses_rates:
      if self.rates is None:
        raise ValueError(f"{self.attention} needs `rates`, one per pool type {self.pool_types}.")
      set_field("rates", tuple(float(r) for r in self.rates))
      _validate_rates(self.rates, self.pool_types)
    else:
      set_field("rates", None)

  @property
  def gate(self) -> Gate:
    return GATES[self.attention]

  def to_dict(self) -> dict[str, Any]:
    """JSON-friendly fields (stored with checkpoints)."""
    fields = dataclasses.asdict(self)
    fields["pool_types"] = list(self.pool_types)
    fields["rates"] = None if self.rates is None else list(self.rates)
    return fields

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any]) -> ModelSpec:
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in fields.items() if k in known})

  def replace(self, **changes) -> ModelSpec:
    return dataclasses.replace(self, **changes)

  def plan(self) -> Plan:
    arch = ARCHS[self.arch]
    scaled = lambda channels: int(channels * self.width_multiplier)
    in_channels = scaled(arch.init_channels)
    strides = arch.cifar_strides if self.cifar else arch.strides
    stages = []
    for s, stage_channels in enumerate(arch.channels):
      units = []
      for u, out in enumerate(stage_channels):
        units.append(Unit(
            stage=s + 1, index=u + 1, in_channels=in_channels,
            mid_channels=None if arch.mids is None else scaled(arch.mids[s][u]),
            out_channels=scaled(out), kernel_size=3 if arch.kernels is None else arch.kernels[s],
            stride=strides[s] if u == 0 else 1, activation=arch.activations[s],
            gated=self.attention != "none" and (arch.gated is None or bool(arch.gated[s][u]))))
        in_channels = scaled(out)
      stages.append(tuple(units))
    final_channels = None
    if arch.final_channels is not None:
      final_channels = (scaled(arch.final_channels) if self.width_multiplier > 1
                        else arch.final_channels)
      in_channels = final_channels
    head = None if self.lightweight_head else arch.head_channels
    return Plan(
        init_channels=scaled(arch.init_channels), init_activation=arch.init_activation,
        init_stride=1 if self.cifar else 2, stages=tuple(stages),
        final_name=(None if arch.final_channels is None
                    else "final_conv" if arch.head_channels is None else "final_conv1"),
        final_channels=final_channels, final_activation=arch.final_activation,
        final_gate=arch.final_gate and self.attention != "none", head_channels=head,
        features=head or in_channels)


class HasModelSpec(Protocol):
  """A model of either framework: it knows the ModelSpec it was built from."""
  model_spec: ModelSpec


ModelLike = Union[ModelSpec, HasModelSpec]


def model_spec_of(model: ModelLike) -> ModelSpec:
  """The ModelSpec itself, or the one a (Flax or PyTorch) model was built from."""
  if isinstance(model, ModelSpec):
    return model
  model_spec = getattr(model, "model_spec", None)
  if not isinstance(model_spec, ModelSpec):
    raise TypeError(f"Expected a ModelSpec or a model built from one, got "
                    f"{type(model).__name__}.")
  return model_spec


def _validate_pool_types(pool_types: tuple[str, ...]) -> None:
  unknown = [p for p in pool_types if p not in POOL_TYPES]
  if unknown:
    raise ValueError(f"Unknown pool type(s) {unknown}; allowed: {POOL_TYPES}.")
  if len(pool_types) not in (2, 3) or len(set(pool_types)) != len(pool_types):
    raise ValueError(f"pool_types must be 2 or 3 distinct names from {POOL_TYPES} "
                     f"in any order; got {pool_types}.")


def _validate_rates(rates: tuple[float, ...], pool_types: tuple[str, ...]) -> None:
  if len(rates) != len(pool_types):
    raise ValueError(f"rates {rates} must give one fraction per pool type {pool_types} "
                     f"({len(pool_types)} values).")
  if any(not 0.0 <= r <= 1.0 for r in rates):
    raise ValueError(f"rates {rates} must each lie in [0, 1].")
  if sum(rates) > 1.0 + 1e-9:
    raise ValueError(f"rates {rates} sum to {sum(rates):g} > 1; they are fractions of the "
                     "channels kept per pool type, e.g. (0.5, 0.5) or (0.3, 0.5, 0.2).")
