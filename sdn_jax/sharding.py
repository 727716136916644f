"""The device mesh and how arrays are laid out on it.

Axes: `data` (batch split) and `fsdp` (parameters split; the batch is split over it too,
as in fully-sharded data parallelism). Parameters are replicated unless fsdp > 1.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A (data, fsdp) mesh from `settings.mesh` over `devices` (default: all).

    `data` splits the batch only and keeps a full copy of the parameters and optimiser
    states per device; `fsdp` splits the batch and those too (gathered per layer as the
    step needs them). Use fsdp when a replica does not fit a device's memory."""
    devices = jax.devices() if devices is None else devices
    count, fsdp = len(devices), mesh_config.fsdp
    # fsdp < 1 must reach the ValueError below, not divide by zero here.
    data = count // fsdp if mesh_config.data == -1 and fsdp >= 1 else mesh_config.data
    if fsdp < 1 or data < 1 or data * fsdp != count:
        raise ValueError(
            f"mesh.data ({mesh_config.data}) x mesh.fsdp ({fsdp}) must use all {count} "
            "devices (mesh.data = -1 takes what fsdp leaves)"
        )
    # jax.make_mesh orders the devices by the physical topology (TPU torus rings, hosts) so
    # that neighbours on an axis are neighbours on the interconnect. Auto axes: the jitted
    # functions place arrays with in/out shardings, not with sharding in types.
    auto = (jax.sharding.AxisType.Auto,) * len(BATCH_AXES)
    return jax.make_mesh((data, fsdp), BATCH_AXES, auto, devices=list(devices))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(
    global_batch_size: int, mesh: Mesh, name: str = "train.global_batch_size"
) -> None:
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"{name} ({global_batch_size}) must be divisible by the "
            f"{devices} devices of the mesh (data x fsdp)"
        )


def _param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest axis that fsdp divides; small or indivisible arrays replicate."""
    if fsdp == 1 or not shape or int(np.prod(shape)) < 1024:
        return P()
    for axis in np.argsort(shape)[::-1]:
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh: Mesh):
    """A NamedSharding per leaf of the (abstract) state."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, _param_spec(tuple(leaf.shape), fsdp)), abstract_state
    )


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
    """This process's numpy batch -> global jax.Arrays split over the mesh."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
