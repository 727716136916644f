"""Benchmarks that need more than sdn_jax: the PyTorch reference (torch_reference.py).

Not part of the installed package: run from the repository root.
"""
