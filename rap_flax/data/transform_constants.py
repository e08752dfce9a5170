"""The constants of the upstream torchvision transforms (docs/upstream.md §5), shared by the
tf.data transforms and their PIL reference in the tests."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224  # resize to 256 before cropping 224; kept for other crop sizes
RRC_SCALE = (0.08, 1.0)  # RandomResizedCrop area fraction
RRC_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio
RRC_ATTEMPTS = 10  # boxes RandomResizedCrop tries before falling back to a centre crop
BRIGHTNESS = 0.4  # ColorJitter(brightness=0.4): factor uniform in [0.6, 1.4]
CIFAR_PAD = 4
