"""The tf.data transforms against a PIL implementation of the upstream torchvision transforms.

Tolerances, in 8-bit levels of the [0, 1] image (1 level = 1/255; ImageNet outputs are compared
after undoing mean/std):
- resize_like_pil vs PIL's Image.resize(BILINEAR): max 1, mean 0.25. PIL rounds to integers
  after each of its two passes, ours only at the end (measured: max 1, mean 0.15-0.2 on noise and
  on photo-like images, for shrinking, enlarging, mixed and mirrored resizes); same size: exact.
- eval (Dogs, ImageNet): max 1.5, mean 0.3 (measured: max 1, mean at most 0.22);
- Dogs train: max 3, mean 1 (PIL also rounds to uint8 after the brightness change; measured:
  max 2.4, mean at most 0.62);
- ImageNet train: max 8, mean 0.5; the random-resized-crop box is identical. decode_and_crop_jpeg
  upsamples chroma differently on the last column of the crop (measured up to 6 levels there;
  mean at most 0.21); the full decode is bit-identical to PIL's.
"""

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from rap_flax.data import transforms  # noqa: E402
from tests import pil_reference  # noqa: E402
from tests.fake_sources import photo_like_jpeg  # noqa: E402

SHAPES = [(375, 500), (500, 333), (200, 180)]


def levels(ours, reference, normalized=False):
  diff = np.abs(np.asarray(ours) - reference)
  if normalized:
    diff = diff * pil_reference.IMAGENET_STD
  return diff.max() * 255, diff.mean() * 255


@pytest.mark.parametrize("shape, size", [
    ((375, 500), (224, 224)), ((500, 333), (224, 224)), ((150, 200), (224, 224)),
    ((300, 120), (224, 224)), ((375, 500), (256, 341)), ((97, 61), (13, 250)),
    ((1, 7), (5, 3))])
@pytest.mark.parametrize("mirror", [False, True])
def test_resize_matches_pil_resize(shape, size, mirror):
  image = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
  ours = transforms.resize_like_pil(tf.constant(image), *size, mirror=mirror).numpy()
  reference = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR), np.float32)
  if mirror:
    reference = reference[:, ::-1]
  assert ours.shape == (*size, 3) and ours.dtype == np.float32
  np.testing.assert_array_equal(ours, np.round(ours))  # integers, like PIL's uint8
  diff = np.abs(ours - reference)
  assert diff.max() <= 1 and diff.mean() <= 0.25


def test_resize_to_the_same_size_is_exact():
  image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.resize_like_pil(tf.constant(image), 37, 53), image)
  np.testing.assert_array_equal(
      transforms.resize_like_pil(tf.constant(image), 37, 53, mirror=True), image[:, ::-1])


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_transforms_match_pil(shape):
  encoded = photo_like_jpeg(*shape)
  dogs = transforms.dogs(224).eval(tf.constant(encoded)).numpy()
  assert dogs.shape == (224, 224, 3)
  max_diff, mean_diff = levels(dogs, pil_reference.dogs_eval(encoded))
  assert max_diff <= 1.5 and mean_diff <= 0.3
  imagenet = transforms.imagenet(224).eval(tf.constant(encoded)).numpy()
  assert imagenet.shape == (224, 224, 3)
  max_diff, mean_diff = levels(imagenet, pil_reference.imagenet_eval(encoded), normalized=True)
  assert max_diff <= 1.5 and mean_diff <= 0.3


@pytest.mark.parametrize("shape", SHAPES)
def test_train_transforms_match_pil_given_the_same_draws(shape):
  encoded = photo_like_jpeg(*shape, seed=1)
  dogs, imagenet = transforms.dogs(224), transforms.imagenet(224)
  rng = np.random.default_rng(shape[0])
  for _ in range(3):
    uniforms = rng.random(imagenet.num_uniforms).astype(np.float32)
    ours = imagenet.train(tf.constant(encoded), tf.constant(uniforms)).numpy()
    max_diff, mean_diff = levels(ours, pil_reference.imagenet_train(encoded, uniforms), True)
    assert max_diff <= 8 and mean_diff <= 0.5
    ours = dogs.train(dogs.decode(tf.constant(encoded)), tf.constant(uniforms[:4])).numpy()
    max_diff, mean_diff = levels(ours, pil_reference.dogs_train(encoded, uniforms[:4]))
    assert max_diff <= 3 and mean_diff <= 1


def test_random_resized_crop_box_follows_torchvision():
  rng = np.random.default_rng(0)
  box = lambda h, w, u: transforms.random_resized_crop_box(
      tf.constant(h), tf.constant(w), tf.constant(u, tf.float32)).numpy().tolist()
  for height, width in [(375, 500), (500, 333), (64, 64), (30, 400), (400, 30)]:
    for _ in range(20):
      uniforms = rng.random(4 * transforms.RRC_ATTEMPTS).astype(np.float32)
      expected = pil_reference.random_resized_crop_box(height, width, uniforms)
      assert box(height, width, uniforms) == list(expected)
      top, left, h, w = expected
      assert 0 <= top <= height - h and 0 <= left <= width - w
  # No attempt fits a 10x1000 strip: the fallback is the central crop with ratio clamped to 4/3.
  uniforms = rng.random(4 * transforms.RRC_ATTEMPTS).astype(np.float32)
  assert box(10, 1000, uniforms) == [0, 493, 10, 13]


def test_cifar_train_is_pad_crop_flip():
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0))).astype(np.float32) / 255
  cifar = transforms.cifar(32)
  for uniforms, top, left, flipped in [((0.0, 0.99, 0.7), 0, 8, False),
                                       ((0.5, 0.2, 0.1), 4, 1, True)]:
    ours = cifar.train(tf.constant(image), tf.constant(uniforms, tf.float32)).numpy()
    expected = padded[top:top + 32, left:left + 32]
    np.testing.assert_allclose(ours, expected[:, ::-1] if flipped else expected, atol=1e-7)


def test_brightness_factor_spans_0_6_to_1_4():
  image = tf.fill([256, 256, 3], tf.constant(100, tf.uint8))
  dogs = transforms.dogs(224)
  for uniform, factor in [(0.0, 0.6), (0.5, 1.0), (1.0, 1.4)]:
    out = dogs.train(image, tf.constant([0.0, 0.0, 0.9, uniform])).numpy()
    np.testing.assert_allclose(out, 100 * factor / 255, rtol=1e-6)
