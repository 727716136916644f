"""A trained run's encoder and decoder, loaded for anonymizing and recovering images.

    model = inference.load("runs/default")        # or load(checkpoint="runs/default/checkpoints")
    salt = passphrase.new_salt()                  # stored beside the image (or use an album's)
    key = inference.make_key(passphrase, {"Smiling": True, ...}, model.model_settings, salt=salt)
    anonymized = model.anonymize(images, key)     # (N, S, S, 3) float in [-1, 1]
    original = model.recover(anonymized, key)

Only E's and G's parameters are read from the checkpoint (an Orbax partial restore), so
neither the training data nor the optimiser states are needed. Nothing is renamed or
written in the run's folder: an unusable checkpoint is an error, never a silent fall-back
to an older step, because recovery only works with the very weights that anonymized.

Secrecy: the key goes into the compiled function as an argument, never as a constant, so
it is not part of any compiled program or compilation cache; a Key's repr hides it.
"""

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sdn_jax import compiler, config_upgrade, keys
from sdn_jax import passphrase as passphrase_lib
from sdn_jax import settings as settings_lib
from sdn_jax import state as state_lib
from sdn_jax.batching import map_in_batches
from sdn_jax.checkpointing import STATE
from sdn_jax.checkpointing import silence_failed_restore_noise as silence_restore_noise
from sdn_jax.models import sdn

DEFAULT_BATCH_SIZE = 16
CONFIG_FILE = "config.json"
EXPORT_FILE = "export.json"  # what an inference-only copy holds (sdn_jax.export)
_NEEDED = ("data", "model", "train")  # the sections of config.json inference reads


class LoadError(Exception):
    """A run or checkpoint cannot be loaded; the message names the path and the reason."""


@dataclasses.dataclass(frozen=True, repr=False)
class Key:
    """The decoder's key: password (K,) and attribute choices (A,), each {-0.5, +0.5}.
    Either may also be one row per image, (N, K) / (N, A): each image's own salt, and
    the attributes it drew from its key."""

    password: np.ndarray
    attributes: np.ndarray

    def __repr__(self) -> str:
        return "Key(<secret>)"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What inference needs of a run's config.json."""

    data: settings_lib.Data
    model: settings_lib.Model
    ema: bool  # the run keeps moving averages of E and G: they are the model


def make_key(
    passphrase: str,
    choices: Mapping[str, bool | None],
    model: settings_lib.Model,
    *,
    salt: bytes | None = None,
    kdf_version: int = passphrase_lib.KDF_VERSION,
) -> Key:
    """The Key of a passphrase and salt (scrypt at a KDF version: sdn_jax.passphrase; the
    current version needs a salt, version 1 takes none) and {attribute: bool, or None:
    unchosen, drawn from the key (version 3) or 0 (versions 1 and 2)}."""
    names = model.key_attributes
    bits, drawn = passphrase_lib.key_bits(
        passphrase, model.password_bits, len(names), salt, kdf_version
    )
    attributes = passphrase_lib.attributes_to_vector(choices, names, drawn)
    return Key(password=passphrase_lib.bits_to_vector(bits), attributes=attributes)


def weights_fingerprint(params: Mapping) -> str:
    """A short hash of E's and G's weights (names, shapes, dtypes and bytes): not a secret,
    it tells two runs (or two steps of one run) apart, since recovery needs the very
    weights that anonymized."""
    digest = hashlib.sha256()
    for name in state_lib.INFERENCE_NETWORKS:
        for where, leaf in jax.tree_util.tree_leaves_with_path(params[name]):
            array = np.ascontiguousarray(jax.device_get(leaf))
            header = f"{name}{jax.tree_util.keystr(where)}:{array.dtype.str}:{array.shape};"
            digest.update(header.encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]


@compiler.jit(static_argnums=(0, 1))
def _transform(encoder, decoder, params, images, direction, password, attributes):
    """One fixed-size batch, a key per image; the modules are static (equal configs share
    one compile)."""
    condition = keys.condition_vector(direction, password, attributes)
    return sdn.generate({"encoder": encoder, "decoder": decoder}, params, images, condition)


class Model:
    """E and G of one run with a fixed batch size (inputs are padded, so any number of
    images runs the same compiled program)."""

    def __init__(self, run: RunConfig, params: dict, *, step: int | None, source: str,
                 batch_size: int):  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.run, self.step, self.source, self.batch_size = run, step, source, batch_size
        self.model_settings = run.model
        self.networks = sdn.build_networks(run.model)
        self.params = {"encoder": params["encoder"], "decoder": params["decoder"]}

    @functools.cached_property
    def fingerprint(self) -> str:
        """weights_fingerprint of this model's E and G."""
        return weights_fingerprint(self.params)

    @property
    def image_size(self) -> int:
        return self.run.data.image_size

    @property
    def key_attributes(self) -> tuple[str, ...]:
        return self.run.model.key_attributes

    def anonymize(self, images, key: Key) -> np.ndarray:
        """Anonymized faces of `images` ((N, S, S, 3) in [-1, 1]) under `key`."""
        return self._run(images, key, keys.ANONYMIZE)

    def recover(self, images, key: Key) -> np.ndarray:
        """The originals of anonymized `images` under the key that anonymized them."""
        return self._run(images, key, keys.RECOVER)

    def compile(self) -> None:
        """Compiles (or finds compiled) the one program every batch runs, with a dummy key."""
        size, m = self.image_size, self.run.model
        dummy = Key(
            np.zeros(m.password_bits, np.float32), np.zeros(len(m.key_attributes), np.float32)
        )
        self._run(np.zeros((1, size, size, 3), np.float32), dummy, keys.ANONYMIZE)

    def _run(self, images, key: Key, direction: float) -> np.ndarray:
        images = np.asarray(images, np.float32)
        size = self.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"images must be (N, {size}, {size}, 3), got {images.shape}")
        if images.size and not (images.min() >= -1.0 and images.max() <= 1.0):
            raise ValueError("images must be in [-1, 1]")
        bits, count = self.run.model.password_bits, len(self.key_attributes)
        if key.password.shape not in ((bits,), (len(images), bits)) or key.attributes.shape not in (
            (count,),
            (len(images), count),
        ):
            raise ValueError("the key was made for another model configuration or image count")
        if not len(images):
            return np.zeros((0, size, size, 3), np.float32)
        # Every batch gets a key per row (one shape: one compiled program for any key).
        passwords = np.broadcast_to(key.password, (len(images), bits))
        attributes = np.broadcast_to(key.attributes, (len(images), count))
        encoder, decoder = self.networks["encoder"], self.networks["decoder"]
        run = lambda x, p, a: _transform(
            encoder, decoder, self.params, x, np.float32(direction), p, a
        )
        return map_in_batches(run, [images, passwords, attributes], self.batch_size)


def read_config(path: str | os.PathLike) -> RunConfig:
    """What inference needs of a run's config.json (as train.py writes it; an older
    run's is upgraded, config_upgrade.upgrade)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise LoadError(f"{path} is missing: is this the folder of a training run?") from None
    except (OSError, ValueError) as error:  # ValueError: not JSON
        raise LoadError(f"{path} cannot be read as a run's config: {error}") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), dict) for k in _NEEDED):
        raise LoadError(f"{path} lacks a {'/'.join(_NEEDED)} section: not the config of an SDN run")
    try:
        config = config_upgrade.upgrade({k: raw[k] for k in _NEEDED})
        data = settings_lib.section(settings_lib.Data, config["data"], "data")
        model = settings_lib.section(settings_lib.Model, config["model"], "model")
        ema = settings_lib.section(settings_lib.Train, config["train"], "train").ema_decay > 0
    except settings_lib.SettingsError as error:
        raise LoadError(f"{path}: {error}") from None
    return RunConfig(data=data, model=model, ema=ema)


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
    """Finished checkpoint steps in a `checkpoints/` folder, oldest first (Orbax renames a
    step folder to its number once written; `.invalid` and temporary folders are skipped)."""
    directory = Path(directory)
    try:
        return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())
    except OSError as error:
        raise LoadError(f"cannot list checkpoints in {directory}: {error}") from None


def find_checkpoint(
    workdir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    step: int | None = None,
) -> tuple[Path, Path]:
    """(config.json, checkpoint step folder) of `--workdir RUN` or `--checkpoint DIR`.

    RUN is a training workdir: its config.json and the newest (or `step`) folder of
    RUN/checkpoints. DIR is one step folder (RUN/checkpoints/<step>, or an export written
    by sdn_jax.export: E and G alone, laid out as a step folder) or a checkpoints folder
    (its newest step, or `step`); its config.json is the first of DIR/config.json,
    DIR/../config.json and DIR/../../config.json, so a copied step folder can carry its own.
    """
    if (workdir is None) == (checkpoint is None):
        raise ValueError("give exactly one of workdir and checkpoint")
    if workdir is not None:
        workdir = Path(workdir).absolute()
        if not workdir.is_dir():
            raise LoadError(f"run folder {workdir} does not exist")
        config_path, folder = workdir / CONFIG_FILE, workdir / "checkpoints"
        if not folder.is_dir():
            raise LoadError(f"{folder} does not exist: {workdir} has no checkpoints (trained?)")
    else:
        folder = Path(checkpoint).absolute()
        if not folder.is_dir():
            raise LoadError(f"checkpoint folder {folder} does not exist")
        candidates = [folder / CONFIG_FILE, folder.parent / CONFIG_FILE]
        candidates.append(folder.parent.parent / CONFIG_FILE)
        config_path = next((c for c in candidates if c.is_file()), candidates[0])
        if (folder / STATE).is_dir():  # One step folder, or an export (sdn_jax.export).
            found = _folder_step(folder)
            if step is not None and found != step:
                found = folder.name if found is None else found
                raise LoadError(f"{folder} is checkpoint step {found}, not step {step}")
            return config_path, folder
    steps = checkpoint_steps(folder)
    if not steps:
        raise LoadError(f"no checkpoint in {folder}")
    if step is None:
        return config_path, folder / str(steps[-1])
    if step not in steps:
        raise LoadError(f"no checkpoint step {step} in {folder}; it has steps {steps}")
    return config_path, folder / str(step)


def _folder_step(folder: Path) -> int | None:
    """A step folder's step: its name, or an export's as its export.json records it."""
    if folder.name.isdigit():
        return int(folder.name)
    try:
        step = json.loads((folder / EXPORT_FILE).read_text()).get("step")
    except (OSError, ValueError, AttributeError):  # none, not JSON, not an object
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _init_params(rng, networks, run: RunConfig) -> dict:
    return sdn.init_params(rng, networks, run.model, run.data.image_size)


def restore_generator(run: RunConfig, step_dir: str | os.PathLike) -> tuple[dict, int]:
    """(E and G params, the saved step) from one checkpoint step folder, on one device."""
    # A run that keeps moving averages of E and G (train.ema_decay) is used through them.
    group = "ema_params" if run.ema else "params"
    return restore_networks(run, step_dir, state_lib.INFERENCE_NETWORKS, group)


def restore_networks(
    run: RunConfig, step_dir: str | os.PathLike, names, group: str = "params"
) -> tuple[dict, int]:
    """({name: params} of the networks `names` from the state's `group` ("params" or
    "ema_params"), the saved step): an Orbax partial restore, on one device."""
    networks = sdn.build_networks(run.model)
    abstract = jax.eval_shape(lambda: _init_params(jax.random.key(0), networks, run))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {
        group: {name: abstract[name] for name in names},
        "step": jax.ShapeDtypeStruct((), jnp.int32),
    }
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), target)
    path = Path(step_dir).absolute() / STATE
    if not path.is_dir():
        raise LoadError(f"{path} is missing: not a complete checkpoint step folder")
    args = ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
    )
    silence_restore_noise()  # tensorstore's leftovers of a failed read, printed at exit
    try:
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(path, args=args)
    except Exception as error:  # Orbax/tensorstore raise many types for a broken folder.
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise LoadError(
            f"checkpoint {path} cannot be restored (truncated or damaged, or written by a run "
            f"with another model config; --step chooses another checkpoint): "
            f"{type(error).__name__}: {first}"
        ) from None
    _check_shapes(restored[group], target[group], path)
    return restored[group], int(restored["step"])


def _check_shapes(restored, target, path) -> None:
    """Orbax may hand back arrays of the saved shapes; they must be the config's."""
    for (where, got), want in zip(
        jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(target)
    ):
        if got.shape != want.shape:
            raise LoadError(
                f"checkpoint {path} does not match its config: {jax.tree_util.keystr(where)} "
                f"is {got.shape} in the checkpoint, {want.shape} in the config"
            )


def load(
    workdir: str | os.PathLike | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    step: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Model:
    """The Model of a trained run (see find_checkpoint for what workdir/checkpoint mean)."""
    config_path, step_dir = find_checkpoint(workdir, checkpoint, step)
    run = read_config(config_path)
    params, saved_step = restore_generator(run, step_dir)
    source = str(Path(workdir if workdir is not None else checkpoint).absolute())
    return Model(run, params, step=saved_step, source=source, batch_size=batch_size)


def initialised(settings, *, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE) -> Model:
    """A Model of a run's settings with freshly initialised weights (for speed
    measurements: the weights do not change the work)."""
    run = RunConfig(data=settings.data, model=settings.model, ema=False)
    networks = sdn.build_networks(run.model)
    init = jax.jit(  # Runs once: LLVM's optimisations would only add compile time.
        lambda rng: _init_params(rng, networks, run),
        compiler_options={"xla_backend_optimization_level": 0},
    )
    params = init(jax.random.key(seed))
    return Model(run, params, step=None, source="initialised", batch_size=batch_size)
