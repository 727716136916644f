"""`jit`: jax.jit with the compiler options this project's programs run fastest with.

On CPU, XLA (jaxlib 0.10) hands convolutions to YNNPACK by default. For the
convolutions here, XLA's own kernels are faster and keep both cores of this machine
busy where YNN's kept about 1.5. With the same results to float rounding, the default
train step ran at 7.3-7.8 steps/s instead of 6.0-6.5 and the FID Inception at 14.0
images/s instead of 7.6 (docs/experiments.md, "Convolutions outside YNN").

The option names an experimental XLA flag, and an XLA that does not know it refuses
the compile. So the first compile checks it once, and where it is unknown the programs
compile without it after one warning. That first compile happens at a program's first
call, not at import, because a backend must not start before jax.distributed.initialize.
Options meant for one backend are ignored by the others.
"""

import functools
import logging

import jax
import jax.numpy as jnp

log = logging.getLogger("sdn_jax")

# YNN keeps the dots (matmuls), where it is as fast as XLA's own kernels. Without YNN
# for dots as well, the train step was slower (7.2-7.5 steps/s); YNN for reductions too
# gave 7.4.
CPU_CONVOLUTIONS_OUTSIDE_YNN = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
}


@functools.cache
def default_options() -> dict:
    """The options every `jit` gets, those this XLA knows (checked once)."""
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=CPU_CONVOLUTIONS_OUTSIDE_YNN)
        probe.lower(jnp.zeros(2)).compile()
    except jax.errors.JaxRuntimeError as error:
        log.warning("Compiling without %s: this XLA refuses it (%s)",
                    CPU_CONVOLUTIONS_OUTSIDE_YNN, str(error).splitlines()[0])  # fmt: skip
        return {}
    return dict(CPU_CONVOLUTIONS_OUTSIDE_YNN)


class _LazyJit:
    """jax.jit(fun, **options), built at the first call or attribute access."""

    def __init__(self, fun, options: dict):
        self._fun, self._options = fun, options
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def _jitted(self):
        options = dict(self._options)
        options["compiler_options"] = {**default_options(), **options.get("compiler_options", {})}
        return jax.jit(self._fun, **options)

    def __call__(self, *args, **kwargs):
        return self._jitted(*args, **kwargs)

    def __getattr__(self, name):  # lower, trace, eval_shape, clear_cache, ...
        return getattr(self._jitted, name)


def jit(fun=None, **options):
    """jax.jit with `default_options()` beneath any `compiler_options` given; usable as
    `@jit`, `@jit(static_argnums=...)` or `jit(fun, ...)`, at import time too."""
    if fun is None:
        return functools.partial(jit, **options)
    return _LazyJit(fun, options)
