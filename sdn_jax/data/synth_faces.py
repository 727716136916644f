"""python -m sdn_jax.data.synth_faces --preview out.png: the renderer's preview grid.

The renderer itself lives in sdn_jax.data.synth; this module keeps the documented
command working.
"""

from sdn_jax.data.synth.preview import main

if __name__ == "__main__":
    main()
