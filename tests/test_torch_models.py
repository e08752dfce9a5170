"""Tests for the PyTorch reference models (rap_flax.torch_models)."""

import ast
import json
import math
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rap_flax import spec  # noqa: E402
from rap_flax.pytorch import gates as torch_gates  # noqa: E402
from rap_flax.pytorch import models as torch_models  # noqa: E402
from tests import golden  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"
CASES = json.loads((DATA / "cases.json").read_text())


@pytest.fixture(autouse=True)
def _one_torch_thread():
  # These models are many tiny ops; on a busy 2-core machine torch's intra-op threads
  # spin-wait and make the file several times slower (measured 93 s vs 13 s).
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _build(case):
  return torch_models.create_model(case["arch"],
                                   case["num_classes"],
                                   attention=case["attention"],
                                   pool_types=case["pool_types"],
                                   rates=case["rates"],
                                   width_multiplier=case["width_multiplier"],
                                   cifar=case["cifar"],
                                   lightweight_head=case["lightweight_head"])


def _load_state_dict(path):
  checkpoint = torch.load(path, weights_only=True)
  if "model_state_dict" in checkpoint:  # Stanford Dogs scripts
    return checkpoint["model_state_dict"]
  # ImageNet script: DataParallel wrapper adds "module." to every key.
  return {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}


def _expected_keys(name):
  rows = [
      line.split("\t")
      for line in (DATA / f"{name}.keys.txt").read_text().splitlines()
      if line and not line.startswith("#")
  ]
  return [(key.removeprefix("module."), ast.literal_eval(shape)) for key, shape, _ in rows]


def _num_params(model):
  return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case):
  model = _build(case)
  assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
      _expected_keys(case["name"])
  assert _num_params(model) == case["num_params"]
  model.load_state_dict(_load_state_dict(DATA / f"{case['name']}.pth"), strict=True)

  golden = np.load(DATA / f"{case['name']}.npz")
  images = torch.from_numpy(golden["input_nchw"])
  for mode in ("eval", "train"):
    getattr(model, mode)()
    with torch.no_grad():
      logits = model(images).numpy()
    expected = golden[f"{mode}_logits"]
    np.testing.assert_array_less(np.abs(logits - expected),
                                 1e-4 * np.maximum(1.0, np.abs(expected)),
                                 err_msg=mode)


@pytest.mark.parametrize("arch,pool_types,rates,expected", golden.UPSTREAM_PARAMETER_COUNTS)
def test_param_counts_match_upstream(arch, pool_types, rates, expected):
  model = torch_models.create_model(arch, 120, "srap", pool_types, rates)
  assert _num_params(model) == expected


FORWARD_SETTINGS = [(arch, attention, ("avg", "std"), (0.5, 0.5))
                    for arch in spec.ARCHS
                    for attention in spec.ATTENTIONS] + [
                        ("mobilenetv3_small", "srap", ("std", "max", "avg"), (0.3, 0.5, 0.2)),
                        ("mobilenetv2", "mrap", ("max", "avg"), (0.25, 0.75)),
                        ("mobilenetv1", "srap", ("max", "std", "avg"), (0.2, 0.2, 0.2)),
                        ("mobilenetv3_large", "mafc", ("std", "max", "avg"), None),
                        ("mobilenetv3_small", "mafc", ("max", "std"), None),
                    ]


@pytest.mark.parametrize("arch,attention,pool_types,rates", FORWARD_SETTINGS)
def test_every_model_runs(arch, attention, pool_types, rates):
  torch.manual_seed(0)
  model = torch_models.create_model(arch, 7, attention, pool_types, rates, width_multiplier=0.25)
  images = torch.rand(2, 3, 40, 40)  # 2x2 final maps: the std pools stay defined
  for mode in ("eval", "train"):
    getattr(model, mode)()
    with torch.no_grad():
      logits = model(images)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all(), mode
  keys = model.state_dict().keys()
  gate_name = {"srap": "TOPIMAP", "mrap": "TOPIMAP", "mafc": "cbamm"}.get(attention, attention)
  assert any(f".{gate_name}." in k for k in keys) == (attention != "none")
  if arch == "mobilenetv3_small" and attention != "none":
    assert any(k.startswith(f"backbone.final_attention.{gate_name}.") for k in keys)


@pytest.mark.parametrize("arch,cifar,lightweight_head,width,head_key,head_shape", [
    ("mobilenetv2", True, False, 1.5, "backbone.final_conv.conv.weight", (1920, 480, 1, 1)),
    ("mobilenetv3_large", False, False, 1.5, "backbone.final_conv2.conv.weight",
     (1280, 1440, 1, 1)),
    ("mobilenetv3_small", True, False, 0.5, "backbone.final_conv2.conv.weight", (1024, 576, 1, 1)),
    ("mobilenetv3_small", False, True, 0.5, "classifier.conv.weight", (5, 576, 1, 1)),
])
def test_head_widths(arch, cifar, lightweight_head, width, head_key, head_shape):
  model = torch_models.create_model(arch,
                                    5,
                                    "none",
                                    width_multiplier=width,
                                    cifar=cifar,
                                    lightweight_head=lightweight_head)
  state = model.state_dict()
  assert tuple(state[head_key].shape) == head_shape
  assert ("backbone.final_conv2.conv.weight" in state) == (not lightweight_head and
                                                           arch.startswith("mobilenetv3"))
  with torch.no_grad():
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("arch", spec.ARCHS)
def test_cifar_stem_and_strides(arch):
  # ImageNet V1/V2/V3-large reduce 32 -> 8 by the end of stage2, V3-small -> 4; CIFAR
  # removes the init-conv stride and the first stride-2 stage (V3-small keeps its 2nd).
  sizes = {}
  for cifar in (False, True):
    model = torch_models.create_model(arch, 3, "none", width_multiplier=0.25, cifar=cifar)
    with torch.no_grad():  # data_bn, init_conv, stage1, stage2
      sizes[cifar] = model.eval().backbone[:4](torch.rand(1, 3, 32, 32)).shape[-1]
  small = arch == "mobilenetv3_small"
  assert sizes == ({False: 4, True: 16} if small else {False: 8, True: 32})


def test_topn_sizes_truncate_and_give_the_rest_to_the_last_type():
  assert spec.top_n_counts(100, (0.29, 0.71)) == (28, 72)
  assert spec.top_n_counts(16, (0.3, 0.5, 0.2)) == (4, 8, 4)
  assert spec.top_n_counts(10, (0.25, 0.25)) == (2, 8)


def test_top_n_patterns_interleave_then_append_leftovers():
  a = torch.tensor([[1.0, 5.0, 3.0, 2.0]])
  b = torch.tensor([[9.0, 7.0, 8.0, 6.0]])
  c = torch.tensor([[0.1, 0.4, 0.3, 0.2]])

  def top(descriptors, sizes):
    return torch_gates.top_n_vector(descriptors, sizes)[0].tolist()

  assert top([a, b], (1, 3)) == [5, 9, 8, 7]
  assert top([a, b], (3, 1)) == [5, 9, 3, 2]
  assert top([a, b], (2, 2)) == [5, 9, 3, 8]
  assert top([a, b, c], (1, 2, 1)) == pytest.approx([5, 9, 0.4, 8])
  assert top([a, b, c], (2, 1, 1)) == pytest.approx([5, 9, 0.4, 3])


def test_init_weights_follows_upstream():
  model = torch_models.create_model("mobilenetv1", 120, "srap")
  state = model.state_dict()
  classifier = state["classifier.conv.weight"]
  assert classifier.std().item() == pytest.approx(math.sqrt(2 / (1024 + 120)), rel=0.05)
  conv = state["backbone.stage5.unit2.conv_pw.conv.weight"]
  bound = math.sqrt(6 / 1024)  # kaiming-uniform, fan_in 1024, gain sqrt(2)
  assert 0.99 * bound < conv.abs().max().item() <= bound
  assert conv.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
  linear = state["backbone.stage5.unit2.TOPIMAP.ChannelGate.mlp.1.weight"]
  assert linear.std().item() == pytest.approx(0.01, rel=0.1)
  for key, value in state.items():
    if key.endswith("bias"):
      assert not value.any(), key
    elif key.endswith("bn.weight"):
      assert (value == 1).all(), key


def test_gate_batchnorm_momentum_is_upstream():
  model = torch_models.create_model("mobilenetv2", 3, "srap", width_multiplier=0.25)
  momenta = {
      name: m.momentum for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
  }
  for name, momentum in momenta.items():
    assert momentum == (0.01 if ".TOPIMAP." in name else 0.1), name


@pytest.mark.parametrize("kwargs,message", [
    (dict(arch="resnet50"), "Unknown arch 'resnet50'.*mobilenetv1"),
    (dict(attention="eca"), "Unknown attention 'eca'.*srap"),
    (dict(pool_types=("avg", "median"), rates=(0.5, 0.5)), r"pool type.*median.*'avg'"),
    (dict(pool_types=("avg",), rates=(1.0,)), "2 or 3 distinct"),
    (dict(pool_types=("avg", "avg"), rates=(0.5, 0.5)), "2 or 3 distinct"),
    (dict(pool_types=("avg", "std"), rates=(0.3, 0.3, 0.4)), "one fraction per pool type"),
    (dict(pool_types=("avg", "std", "max"), rates=(0.5, 0.5)), "one fraction per pool type"),
    (dict(pool_types=("avg", "std"), rates=None), "needs `rates`, one per pool type"),
    (dict(pool_types=("avg", "std"), rates=(0.6, 0.5)), "sum to 1.1 > 1"),
    (dict(pool_types=("avg", "std"), rates=(-0.1, 0.5)), r"lie in \[0, 1\]"),
    (dict(attention="mafc", pool_types=("avg", "mode")), "mode"),
    (dict(width_multiplier=0.0), "width_multiplier"),
])
def test_invalid_settings_raise(kwargs, message):
  settings = dict(arch="mobilenetv1", num_classes=10, attention="srap")
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message):
    torch_models.create_model(**settings)
