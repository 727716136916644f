"""The sharded training set-up, one recipe for the trainer, the benchmark and the tests.

From settings and a mesh: the networks and optimisers, the state's abstract shapes
(jax.eval_shape, no compute) with a sharding per leaf, a jitted function that creates
the state already sharded, and the jitted, state-donating update steps.
"""

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from sdn_jax import compiler, sharding, steps
from sdn_jax import state as state_lib
from sdn_jax.models import sdn
from sdn_jax.settings import Settings


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    settings: Settings
    mesh: Mesh
    networks: dict
    optimizers: dict
    abstract_state: state_lib.TrainState  # ShapeDtypeStructs carrying their shardings
    state_sharding: state_lib.TrainState  # a NamedSharding per leaf
    batch_sharding: NamedSharding
    create_state: Callable[[], state_lib.TrainState]  # jitted: a fresh, sharded state
    step_rng: jax.Array

    def jit_step(self, step_fn, **jit_options):
        """(state, batch) -> (state, metrics), sharded, donating the old state."""
        return compiler.jit(
            step_fn,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
            donate_argnums=0,
            **jit_options,
        )

    def train_step(self, **jit_options):
        fn = steps.make_train_step(self.networks, self.optimizers, self.settings, self.step_rng)
        return self.jit_step(fn, **jit_options)

    def classifier_warmup_step(self, **jit_options):
        fn = steps.make_classifier_warmup_step(
            self.networks, self.optimizers, self.settings, self.step_rng
        )
        return self.jit_step(fn, **jit_options)

    def global_batch(self, local_batch: dict) -> dict:
        """This process's numpy batch as global arrays split over the mesh."""
        return sharding.global_batch(local_batch, self.batch_sharding)


def build(settings: Settings, mesh: Mesh | None = None) -> TrainingSetup:
    """Everything a run needs before its first step; checks the batch fits the mesh."""
    mesh = sharding.make_mesh(settings.mesh) if mesh is None else mesh
    sharding.check_batch_size(settings.train.global_batch_size, mesh)
    sharding.check_batch_size(settings.train.generator_images, mesh, "train.generator_batch_size")
    networks = sdn.build_networks(settings.model)
    optimizers = state_lib.build_optimizers(settings)
    init_rng, step_rng = jax.random.split(jax.random.key(settings.seed))
    create = lambda: state_lib.create_state(init_rng, networks, optimizers, settings)  # noqa: E731
    abstract = jax.eval_shape(create)
    state_sharding = sharding.state_shardings(abstract, mesh)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )
    # Runs once: LLVM optimisation would only add compile time (~30 s -> ~5 s without).
    create_state = jax.jit(
        create,
        out_shardings=state_sharding,
        compiler_options={"xla_backend_optimization_level": 0},
    )
    return TrainingSetup(
        settings=settings,
        mesh=mesh,
        networks=networks,
        optimizers=optimizers,
        abstract_state=abstract_state,
        state_sharding=state_sharding,
        batch_sharding=sharding.batch_sharding(mesh),
        create_state=create_state,
        step_rng=step_rng,
    )


def random_batch(settings: Settings, seed: int = 0) -> dict:
    """A batch of random images with the run's grouping of photos per person (benchmarks
    and tests: a step's cost does not depend on what the pixels show)."""
    rng = np.random.default_rng(seed)
    size, count = settings.data.image_size, settings.train.global_batch_size
    group = settings.data.photos_per_person_in_batch
    return {
        "image": rng.uniform(-1, 1, (count, size, size, 3)).astype(np.float32),
        "identity": (np.arange(count) // group).astype(np.int32),
        "attributes": rng.random((count, 40)) < 0.5,
    }
