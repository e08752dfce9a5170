"""Building blocks: activations, normalisation, convolutions and attention gates."""
