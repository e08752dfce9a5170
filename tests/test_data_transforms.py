"""The tf.data transforms against a PIL implementation of the upstream torchvision transforms.

The transforms yield uint8 images; data.model_input maps them to the model's input (ToTensor,
Normalize) on the device, and that is what is compared with the PIL side here. Tolerances, in
8-bit levels of the [0, 1] image (1 level = 1/255; ImageNet after undoing mean/std), with the
differences measured on these images:
- resize_like_pil vs PIL's Image.resize(BILINEAR): max 1, mean 0.25. PIL rounds to integers
  after each of its two passes, ours only at the end (measured: max 1, mean 0.15-0.2 on noise and
  on photo-like images, for shrinking, enlarging, mixed and mirrored resizes); same size: exact.
- eval (Dogs, ImageNet) and ImageNet train: max 1, mean 0.3 (measured: max 1, mean at most 0.21).
  The random-resized-crop box is identical, and the crop decode is bit-identical to PIL's full
  decode (the decoded window has a margin column, see test_widened_crop_decodes_as_the_full_image).
- Dogs train: max 2, mean 0.3; brightness is truncated to uint8 as in PIL, so the resize's
  one level can become two after a factor up to 1.4 (measured: max 2, mean at most 0.21).
"""

import numpy as np
import pytest
from PIL import Image, ImageEnhance

tf = pytest.importorskip("tensorflow")

from rap_flax import data  # noqa: E402
from rap_flax.data import transforms  # noqa: E402
from tests import pil_reference  # noqa: E402
from tests.fake_sources import photo_like_jpeg  # noqa: E402

SHAPES = [(375, 500), (500, 333), (200, 180)]


def model_input(dataset):
  config = data.default_config()
  config.dataset = dataset
  return data.model_input(config)


TO_IMAGENET_INPUT, TO_DOGS_INPUT = model_input("imagenet2012"), model_input("stanford_dogs")


def levels(ours, reference, normalized=False):
  diff = np.abs(np.asarray(ours, np.float64) - reference)
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
  ours = transforms.resize_like_pil(tf.constant(image), size, mirror=mirror).numpy()
  reference = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR), np.float32)
  if mirror:
    reference = reference[:, ::-1]
  assert ours.shape == (*size, 3) and ours.dtype == np.uint8
  diff = np.abs(ours - reference)
  assert diff.max() <= 1 and diff.mean() <= 0.25


def test_resize_to_the_same_size_is_exact():
  image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.resize_like_pil(tf.constant(image), (37, 53)), image)
  np.testing.assert_array_equal(
      transforms.resize_like_pil(tf.constant(image), (37, 53), mirror=True), image[:, ::-1])


@pytest.mark.parametrize("crop, size, output", [
    ((10, 20, 150, 170), (224, 224), None),  # shrink a crop
    ((0, 3, 40, 50), (224, 224), None),  # enlarge a crop at the image's edge
    (None, (256, 341), (16, 58, 224, 224)),  # the centre of a resize, as the eval transform
    ((5, 7, 200, 180), (97, 61), (3, 9, 50, 40))])
def test_resize_of_a_crop_computes_only_its_pixels(crop, size, output):
  """PIL's image.crop(crop).resize(size).crop(output), without reading outside the crop."""
  image = np.random.default_rng(1).integers(0, 256, (260, 300, 3), dtype=np.uint8)
  pil = Image.fromarray(image)
  if crop is not None:
    top, left, height, width = crop
    pil = pil.crop((left, top, left + width, top + height))
    # Pixels outside the crop must not count: make them extreme.
    outside = np.ones(image.shape[:2], bool)
    outside[top:top + height, left:left + width] = False
    image[outside] = 255
  reference = np.asarray(pil.resize(size[::-1], Image.BILINEAR), np.float32)
  if output is not None:
    top, left, height, width = output
    reference = reference[top:top + height, left:left + width]
  ours = transforms.resize_like_pil(tf.constant(image), size, crop=crop, output=output).numpy()
  assert ours.shape == reference.shape
  diff = np.abs(ours - reference)
  assert diff.max() <= 1 and diff.mean() <= 0.25


@pytest.mark.parametrize("shape", SHAPES)
def test_widened_crop_decodes_as_the_full_image(shape):
  """decode_and_crop_jpeg upsamples the chroma of a window's edge columns without their outer
  neighbours: the exact box differs from the full decode in about half of the crops (up to 26
  levels); the widened window's inner columns never do."""
  encoded = photo_like_jpeg(*shape, seed=2)
  full = np.asarray(pil_reference.load_rgb(encoded))
  rng = np.random.default_rng(0)
  exact_differs = 0
  for _ in range(40):
    uniforms = rng.random(4 * transforms.RRC_ATTEMPTS).astype(np.float32)
    box = transforms.random_resized_crop_box(*shape, tf.constant(uniforms))
    top, left, height, width = box.numpy()
    window, offset = transforms.widened_crop(box, shape[1])
    assert window.numpy()[3] % transforms.WIDTH_STEP == 0 or window.numpy()[3] == shape[1]
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3,
                                         dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(crop[:, int(offset):int(offset) + width],
                                  full[top:top + height, left:left + width])
    exact = tf.image.decode_and_crop_jpeg(encoded, box, channels=3,
                                          dct_method="INTEGER_ACCURATE").numpy()
    exact_differs += not np.array_equal(exact, full[top:top + height, left:left + width])
  assert exact_differs > 0  # the margin is what makes the difference


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_transforms_match_pil(shape):
  encoded = photo_like_jpeg(*shape)
  dogs = transforms.dogs(224).eval(tf.constant(encoded)).numpy()
  assert dogs.shape == (224, 224, 3) and dogs.dtype == np.uint8
  max_diff, mean_diff = levels(TO_DOGS_INPUT(dogs), pil_reference.dogs_eval(encoded))
  assert max_diff <= 1 + 1e-3 and mean_diff <= 0.3
  imagenet = transforms.imagenet(224).eval(tf.constant(encoded)).numpy()
  assert imagenet.shape == (224, 224, 3) and imagenet.dtype == np.uint8
  max_diff, mean_diff = levels(TO_IMAGENET_INPUT(imagenet), pil_reference.imagenet_eval(encoded),
                               normalized=True)
  assert max_diff <= 1 + 1e-3 and mean_diff <= 0.3


@pytest.mark.parametrize("shape", SHAPES)
def test_train_transforms_match_pil_given_the_same_draws(shape):
  encoded = photo_like_jpeg(*shape, seed=1)
  dogs, imagenet = transforms.dogs(224), transforms.imagenet(224)
  rng = np.random.default_rng(shape[0])
  for _ in range(4):
    uniforms = rng.random(imagenet.num_uniforms).astype(np.float32)
    ours = imagenet.train(tf.constant(encoded), tf.constant(uniforms)).numpy()
    assert ours.dtype == np.uint8
    max_diff, mean_diff = levels(TO_IMAGENET_INPUT(ours),
                                 pil_reference.imagenet_train(encoded, uniforms), True)
    assert max_diff <= 1 + 1e-3 and mean_diff <= 0.3
    ours = dogs.train(dogs.decode(tf.constant(encoded)), tf.constant(uniforms[:4])).numpy()
    max_diff, mean_diff = levels(TO_DOGS_INPUT(ours), pil_reference.dogs_train(encoded,
                                                                               uniforms[:4]))
    assert max_diff <= 2 + 1e-3 and mean_diff <= 0.3


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
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  cifar = transforms.cifar(32)
  for uniforms, top, left, flipped in [((0.0, 0.99, 0.7), 0, 8, False),
                                       ((0.5, 0.2, 0.1), 4, 1, True)]:
    ours = cifar.train(tf.constant(image), tf.constant(uniforms, tf.float32)).numpy()
    expected = padded[top:top + 32, left:left + 32]
    np.testing.assert_array_equal(ours, expected[:, ::-1] if flipped else expected)


def test_brightness_is_pils_blend_with_black():
  image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
  dogs = transforms.dogs(224)
  for uniform in (0.0, 0.3, 0.5, 0.8, 1.0):
    factor = np.float32(1 - 0.4 + 0.8 * np.float32(uniform))  # the factor ours computes
    ours = dogs.train(tf.constant(image), tf.constant([0.0, 0.0, 0.9, uniform])).numpy()
    reference = ImageEnhance.Brightness(Image.fromarray(image[:224, :224])).enhance(factor)
    np.testing.assert_array_equal(ours, np.asarray(reference))


def test_model_input_normalises_uint8_as_the_upstream_transforms():
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  mean, std = pil_reference.IMAGENET_MEAN, pil_reference.IMAGENET_STD
  np.testing.assert_allclose(TO_IMAGENET_INPUT(images), (images / 255 - mean) / std, atol=1e-5)
  for dataset in ("stanford_dogs", "cifar10"):
    np.testing.assert_allclose(model_input(dataset)(images), images / 255, atol=1e-7)
  floats = images.astype(np.float32) / 255
  assert model_input("digits")(floats) is floats  # the in-memory datasets hand over float32
  with pytest.raises(TypeError, match="uint8 images need their dataset's scaling"):
    data.model_input()(images)
  with pytest.raises(TypeError, match="imagenet2012 batches hold uint8 images"):
    TO_IMAGENET_INPUT(floats)
