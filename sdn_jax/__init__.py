"""sdn-jax: the Secure Dual Network for reversible face anonymization, in JAX/Flax."""

__version__ = "0.1.0"
