"""Latent-space manipulation: attribute directions, edits by degrees, their analysis."""
