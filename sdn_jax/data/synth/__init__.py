"""Procedural cartoon faces with exact identity and attribute ground truth.

The renderer behind the `synth_faces` dataset, by job:
  world.py    who the people are: seeded identity traits, per-photo draws, labels
  render.py   render_faces: draws -> pixels (painter.py on canvas.py), sensor noise
  painter.py  paints a batch of faces from traits, layer by layer
  canvas.py   the batch canvas and anti-aliased shapes the painter draws with
  preview.py  the preview grid CLI (`python -m sdn_jax.data.synth_faces --preview out.png`)
"""

from sdn_jax.data.synth.render import IMAGE_SIZES, render_faces
from sdn_jax.data.synth.world import PHOTO_ATTRIBUTES, POSE_KEYS, uniform_draws

__all__ = ["IMAGE_SIZES", "PHOTO_ATTRIBUTES", "POSE_KEYS", "render_faces", "uniform_draws"]
