"""The optimizer and schedules against torch.optim.SGD and torch's lr schedulers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from rap_flax.training import config_lib, optim


def _config(**overrides):
  config = config_lib.base_config()
  config.update(overrides)
  return config


def _torch_net(rng: np.random.Generator) -> torch.nn.Module:
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(4, 5))
  with torch.no_grad():  # Non-trivial BN affine params so that decay on them matters.
    net[1].weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, 4).astype(np.float32)))
    net[1].bias.copy_(torch.from_numpy(rng.normal(size=4).astype(np.float32)))
  return net


def _jax_params(net: torch.nn.Module) -> dict[str, jax.Array]:
  return {name: jnp.asarray(p.detach().numpy()) for name, p in net.named_parameters()}


def _jax_loss(params, images, labels):
  """The torch net above, written with lax (NCHW) so that both see the same function."""
  x = jax.lax.conv_general_dilated(images, params["0.weight"], (1, 1), [(1, 1), (1, 1)])
  x = x + params["0.bias"][None, :, None, None]
  mean = x.mean(axis=(0, 2, 3), keepdims=True)
  var = x.var(axis=(0, 2, 3), keepdims=True)
  x = (x - mean) / jnp.sqrt(var + 1e-5)
  x = x * params["1.weight"][None, :, None, None] + params["1.bias"][None, :, None, None]
  x = jax.nn.relu(x).mean(axis=(2, 3))
  logits = x @ params["5.weight"].T + params["5.bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch_step_for_step(nesterov):
  """Momentum 0.9, coupled weight decay 1e-4 on every parameter, a multistep lr drop."""
  rng = np.random.default_rng(0)
  net = _torch_net(rng)
  steps_per_epoch, num_epochs = 3, 4
  config = _config(learning_rate=0.5, momentum=0.9, weight_decay=1e-4, nesterov=nesterov,
                   lr_schedule="multistep", lr_milestones=(2, 3), lr_decay_factor=0.1)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch, steps_per_epoch * num_epochs)
  tx = optim.create_optimizer(config, lr_fn)
  params = _jax_params(net)
  opt_state = tx.init(params)
  torch_opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4,
                              nesterov=nesterov)
  torch_sched = torch.optim.lr_scheduler.MultiStepLR(torch_opt, milestones=[2, 3], gamma=0.1)
  grad_fn = jax.jit(jax.grad(_jax_loss))

  for epoch in range(num_epochs):
    for _ in range(steps_per_epoch):
      images = rng.normal(size=(8, 3, 6, 6)).astype(np.float32)
      labels = rng.integers(0, 5, size=8)
      torch_opt.zero_grad()
      torch.nn.functional.cross_entropy(net(torch.from_numpy(images)),
                                        torch.from_numpy(labels)).backward()
      torch_opt.step()
      updates, opt_state = tx.update(grad_fn(params, images, labels), opt_state, params)
      params = optax.apply_updates(params, updates)
      for name, p in net.named_parameters():
        np.testing.assert_allclose(params[name], p.detach().numpy(), rtol=2e-5, atol=2e-6,
                                   err_msg=f"{name} after epoch {epoch}")
    torch_sched.step()
  # The lr really dropped twice, so the comparison covered the schedule.
  assert torch_opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.01)


def test_weight_decay_reaches_parameters_without_gradient():
  """torch adds weight_decay * p to every parameter's gradient, even a zero gradient."""
  config = _config(learning_rate=0.1, momentum=0.9, weight_decay=0.01)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 1, 10))
  params = {"w": jnp.array([2.0])}
  updates, _ = tx.update({"w": jnp.array([0.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.1 * 0.01 * 2.0], rtol=1e-6)


def test_step_schedule_matches_torch_steplr():
  steps_per_epoch = 5
  config = _config(learning_rate=0.1, lr_schedule="step", lr_step_epochs=3, lr_decay_factor=0.1)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch, 10 * steps_per_epoch)
  opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
  sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
  for epoch in range(10):
    for i in range(steps_per_epoch):
      assert float(lr_fn(epoch * steps_per_epoch + i)) == pytest.approx(
          opt.param_groups[0]["lr"], rel=1e-6), (epoch, i)
    opt.step()
    sched.step()


def test_cosine_with_warmup():
  config = _config(learning_rate=0.4, lr_schedule="cosine", warmup_epochs=2)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=10, num_train_steps=100)
  values = np.array([float(lr_fn(s)) for s in range(101)])
  assert values[0] == 0.0
  assert np.all(np.diff(values[:21]) > 0)  # Linear warmup to the peak...
  assert values[20] == pytest.approx(0.4)
  assert values[10] == pytest.approx(0.2)
  assert np.all(np.diff(values[20:]) < 0)  # ...then cosine decay to 0.
  assert values[60] == pytest.approx(0.2, rel=1e-5)  # Half way through the decay.
  assert values[100] == pytest.approx(0.0, abs=1e-7)


def test_warmup_scales_a_multistep_schedule():
  config = _config(learning_rate=1.0, lr_schedule="multistep", lr_milestones=(3,),
                   warmup_epochs=1)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=4, num_train_steps=20)
  np.testing.assert_allclose([float(lr_fn(s)) for s in (0, 2, 4, 11, 12)],
                             [0.0, 0.5, 1.0, 1.0, 0.1], rtol=1e-6)
