"""Advanced and sequential VAEs in JAX/Flax: VQ-VAE, VRAE and Ladder VAE."""
