"""rap_flax: SRAP / MRAP / MAFC attention for MobileNets in JAX/Flax."""
