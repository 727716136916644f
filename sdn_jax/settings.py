"""The run's settings, typed and checked once at start-up.

`configs/*.py` are the only source of defaults: `from_config(config)` turns a (locked)
ConfigDict into frozen dataclasses, and every field must be there. Unknown or missing
fields and bad values are a `SettingsError` naming the field, raised before anything
runs, so jitted code receives plain, valid values and never checks them itself.
An older run's config.json is brought up to date by `config_upgrade.upgrade` first.
"""

import dataclasses
import types
import typing
from collections.abc import Mapping

from sdn_jax.data import attributes as attr_lib


class SettingsError(ValueError):
    """A config field is unknown, missing or has a bad value."""


@dataclasses.dataclass(frozen=True)
class Data:
    name: str  # "synth_faces" or "celeba"
    image_size: int
    data_dir: str | None
    manual_dir: str | None
    dataset_seed: int
    num_train_identities: int
    photos_per_identity: int
    validation_photos_per_identity: int
    num_test_identities: int
    random_flip: bool
    photos_per_person_in_batch: int
    worker_count: int
    in_memory_mb: float

    def check(self):
        _require(self.name in ("synth_faces", "celeba"), "data.name", self.name,
                 "'synth_faces' or 'celeba'")  # fmt: skip
        _require(self.image_size >= 8, "data.image_size", self.image_size, "at least 8")
        _require(self.photos_per_person_in_batch >= 1, "data.photos_per_person_in_batch",
                 self.photos_per_person_in_batch, "at least 1")  # fmt: skip
        _require(self.worker_count >= 0, "data.worker_count", self.worker_count, ">= 0")
        _require(self.in_memory_mb >= 0, "data.in_memory_mb", self.in_memory_mb, ">= 0")


@dataclasses.dataclass(frozen=True)
class Model:
    password_bits: int
    key_attributes: tuple[str, ...]
    widths: tuple[int, ...]
    encoder_res_blocks: int
    decoder_res_blocks: int
    latent_dim: int
    condition_hidden: int
    use_skips: tuple[bool, ...]
    residual_output: bool
    recovery: str  # "inverse" or "conditioned"
    key_features: int
    key_frequency: float
    discriminator_widths: tuple[int, ...]
    discriminator_scales: int
    classifier_widths: tuple[int, ...]
    classifier_embedding_head: str  # "flatten" or "pooled"
    embedding_dim: int
    key_predictor_widths: tuple[int, ...]
    club_hidden: int
    dtype: str  # "float32" or "bfloat16": what the networks compute in (models/precision.py)

    def check(self):
        bits = self.password_bits
        _require(self.dtype in ("float32", "bfloat16"), "model.dtype", self.dtype,
                 "'float32' or 'bfloat16'")  # fmt: skip
        _require(0 < bits <= 512 and bits % 8 == 0, "model.password_bits", bits,
                 "a multiple of 8 from 8 to 512")  # fmt: skip
        try:
            attr_lib.attribute_indices(self.key_attributes)
        except (KeyError, ValueError) as error:
            raise SettingsError(f"model.key_attributes: {error}") from None
        _require(len(set(self.key_attributes)) == len(self.key_attributes),
                 "model.key_attributes", self.key_attributes, "names without repeats")  # fmt: skip
        _require(len(self.use_skips) == len(self.widths) - 1, "model.use_skips", self.use_skips,
                 f"one flag per level above the deepest ({len(self.widths) - 1} for widths "
                 f"{self.widths})")  # fmt: skip
        _require(self.recovery in ("inverse", "conditioned"), "model.recovery", self.recovery,
                 "'inverse' or 'conditioned'")  # fmt: skip
        if self.recovery == "inverse" and not self.residual_output:
            raise SettingsError("model.recovery='inverse' subtracts a change: it needs "
                                "model.residual_output=True")  # fmt: skip
        _require(self.classifier_embedding_head in ("flatten", "pooled"),
                 "model.classifier_embedding_head", self.classifier_embedding_head,
                 "'flatten' or 'pooled'")  # fmt: skip
        _require(self.key_features % 2 == 0 and self.key_features >= 0, "model.key_features",
                 self.key_features, "an even number >= 0")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Loss:
    """Weights of the loss terms (objectives.py) and their margins."""

    adversarial: float
    recovery: float
    recovery_grad_scale: float
    keep_anonymized: float
    keep_margin: float
    change_anonymized: float
    change_margin: float
    wrong_distance: float
    wrong_margin: float
    attributes: float
    identity_embedding: float
    club: float
    diversity: float
    wrong_diversity: float
    key_information: float
    recovered_embedding: float
    classifier_contrastive: float
    contrastive_temperature: float
    classifier_key_attributes: float
    classifier_adversarial: float
    classifier_recolour: float
    critic_recolour: float
    ramp_steps: int

    def check(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            _require(value >= 0, f"loss.{field.name}", value, ">= 0")
        for name in ("recovery_grad_scale", "classifier_recolour", "critic_recolour"):
            value = getattr(self, name)
            _require(value <= 1, f"loss.{name}", value, "in [0, 1]")
        _require(self.contrastive_temperature > 0, "loss.contrastive_temperature",
                 self.contrastive_temperature, "> 0")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Optim:
    learning_rate: float
    b1: float
    b2: float
    warmup_steps: int
    decay_to: float
    generator_lr_scale: float
    discriminator_lr_scale: float
    classifier_lr_scale: float
    club_lr_scale: float

    def check(self):
        _require(self.learning_rate > 0, "optim.learning_rate", self.learning_rate, "> 0")
        for name in ("b1", "b2"):
            _require(0 <= getattr(self, name) < 1, f"optim.{name}", getattr(self, name),
                     "in [0, 1)")  # fmt: skip
        _require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")


@dataclasses.dataclass(frozen=True)
class Train:
    num_steps: int
    global_batch_size: int
    generator_batch_size: int | None  # None: G and D train on the whole batch
    classifier_warmup_steps: int
    ema_decay: float
    log_every_steps: int
    checkpoint_every_steps: int
    sample_every_steps: int
    num_samples: int
    max_checkpoints: int

    @property
    def generator_images(self) -> int:
        """Images per step that G and D train on."""
        size = self.generator_batch_size
        return self.global_batch_size if size is None else size

    def check(self):
        for name in ("num_steps", "global_batch_size", "log_every_steps",
                     "checkpoint_every_steps", "sample_every_steps", "num_samples",
                     "max_checkpoints"):  # fmt: skip
            _require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), ">= 1")
        _require(self.classifier_warmup_steps >= 0, "train.classifier_warmup_steps",
                 self.classifier_warmup_steps, ">= 0")  # fmt: skip
        _require(0 <= self.ema_decay < 1, "train.ema_decay", self.ema_decay, "in [0, 1)")
        size, total = self.generator_images, self.global_batch_size
        _require(1 <= size <= total and total % size == 0, "train.generator_batch_size", size,
                 f"a divisor of train.global_batch_size ({total}): G trains on every "
                 "m-th image of each batch")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Mesh:
    data: int  # -1: all the devices that fsdp leaves
    fsdp: int

    def check(self):
        _require(self.fsdp >= 1, "mesh.fsdp", self.fsdp, ">= 1")
        _require(self.data == -1 or self.data >= 1, "mesh.data", self.data, "-1 or >= 1")


@dataclasses.dataclass(frozen=True)
class Report:
    """The independent evaluation (evaluation/evaluate.py)."""

    max_people: int
    probes_per_person: int
    validation_people: int  # 0 skips the known people
    security: bool  # run the security study
    realism: bool  # run the realism judge

    def check(self):
        for name in ("max_people", "probes_per_person"):
            _require(getattr(self, name) >= 1, f"eval.report.{name}", getattr(self, name), ">= 1")
        _require(self.validation_people >= 0, "eval.report.validation_people",
                 self.validation_people, ">= 0")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Attacker:
    """The independent recognizer (evaluation/attacker.py)."""

    seed: int
    far: float
    calibration_people: int
    # Trained on at most this many train photos (whole people, drawn by identity): bounded
    # host and device memory at CelebA's size. None: the whole split.
    max_train_images: int | None
    gallery_photos: int
    input_size: int
    widths: tuple[int, ...]
    res_blocks: int
    embedding_dim: int
    num_steps: int
    people_per_batch: int
    photos_per_person: int
    margin: float
    scale: float
    recolour_probability: float
    damage_probability: float
    learning_rate: float
    weight_decay: float
    attribute_input_size: int | None  # None: the data's resolution
    attribute_widths: tuple[int, ...]
    attribute_steps: int
    attribute_batch_size: int
    key_attribute_weight: float
    log_every_steps: int
    batch_size: int

    def check(self):
        _require(0 < self.far < 1, "eval.attacker.far", self.far, "in (0, 1)")
        for name in ("gallery_photos", "input_size", "num_steps", "people_per_batch",
                     "photos_per_person", "attribute_steps", "attribute_batch_size",
                     "log_every_steps", "batch_size"):  # fmt: skip
            _require(getattr(self, name) >= 1, f"eval.attacker.{name}", getattr(self, name),
                     ">= 1")  # fmt: skip
        _require(self.learning_rate > 0, "eval.attacker.learning_rate", self.learning_rate, "> 0")
        if self.max_train_images is not None:
            _require(self.max_train_images >= 1, "eval.attacker.max_train_images",
                     self.max_train_images, ">= 1 (or None: all)")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Security:
    """The security study (evaluation/security.py)."""

    seed: int
    num_faces: int
    hamming_distances: tuple[int, ...]
    num_random_keys: int
    random_attack_faces: int
    jpeg_qualities: tuple[int, ...]
    resize_factor: int
    batch_size: int
    keys_per_call: int
    kdf_repeats: int

    def check(self):
        for name in ("num_faces", "num_random_keys", "keys_per_call", "batch_size"):
            _require(getattr(self, name) >= 1, f"eval.security.{name}", getattr(self, name),
                     ">= 1")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Realism:
    """The realism judge (evaluation/realism.py, two_sample.py)."""

    seed: int
    num_faces: int  # the first faces of the split, spread over its people
    kid_subsets: int
    kid_subset_size: int
    inception_batch_size: int
    cnn_steps: int
    cnn_batch_size: int
    logistic_steps: int
    logistic_l2: float

    def check(self):
        for name in ("num_faces", "kid_subsets", "kid_subset_size", "inception_batch_size",
                     "cnn_steps", "cnn_batch_size", "logistic_steps"):  # fmt: skip
            _require(getattr(self, name) >= 1, f"eval.realism.{name}", getattr(self, name),
                     ">= 1")  # fmt: skip
        _require(self.logistic_l2 >= 0, "eval.realism.logistic_l2", self.logistic_l2, ">= 0")


@dataclasses.dataclass(frozen=True)
class Eval:
    split: str
    num_images: int
    batch_size: int
    full_report: bool
    report: Report
    attacker: Attacker
    security: Security
    realism: Realism

    def check(self):
        _require(self.split in ("train", "validation", "test"), "eval.split", self.split,
                 "'train', 'validation' or 'test'")  # fmt: skip
        _require(self.batch_size >= 1, "eval.batch_size", self.batch_size, ">= 1")
        _require(self.num_images >= 1, "eval.num_images", self.num_images, ">= 1")


@dataclasses.dataclass(frozen=True)
class Settings:
    seed: int
    data: Data
    model: Model
    loss: Loss
    optim: Optim
    train: Train
    mesh: Mesh
    eval: Eval


def _require(ok: bool, field: str, value, what: str) -> None:
    if not ok:
        raise SettingsError(f"{field} must be {what}, got {value!r}")


def _plain(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _convert(value, annotation, field: str):
    """`value` as `annotation` says (tuples from lists, ints as floats), or a SettingsError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (annotation,) = [a for a in args if a is not type(None)]
        return _convert(value, annotation, field)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping) and not hasattr(value, "to_dict"):
            raise SettingsError(f"{field} must be a section of fields, got {value!r}")
        return _build(annotation, _plain(value), field)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise SettingsError(f"{field} must be a list, got {value!r}")
        return tuple(_convert(v, args[0], f"{field}[{i}]") for i, v in enumerate(value))
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation in (bool, str) and isinstance(value, annotation):
        return value
    raise SettingsError(f"{field} must be {annotation.__name__}, got {value!r}")


def _build(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SettingsError(f"unknown config field(s): {', '.join(prefix + u for u in unknown)}")
    missing = [n for n in names if n not in values]
    if missing:
        raise SettingsError(f"missing config field(s): {', '.join(prefix + m for m in missing)}")
    built = cls(**{n: _convert(values[n], hints[n], prefix + n) for n in names})
    if hasattr(built, "check"):
        built.check()
    return built


def from_config(config) -> Settings:
    """Frozen, checked settings from a config (ConfigDict or dict); SettingsError if bad."""
    return _build(Settings, _plain(config), "")


def section(cls, config, name: str):
    """One section (e.g. `section(Model, config.model, "model")`), for tools that need
    only part of a run's settings (the file commands read data and model)."""
    return _convert(config, cls, name)
