"""sdn_jax.settings: a config becomes frozen, checked settings, or a SettingsError naming
the field; config_upgrade brings an older run's config.json up to date."""

import dataclasses
import json

import pytest
from tiny_model import tiny_config

from configs import celeba128, default, tiny
from sdn_jax import config_upgrade
from sdn_jax import settings as settings_lib
from sdn_jax.settings import SettingsError


@pytest.mark.parametrize("module", [default, tiny, celeba128], ids=lambda m: m.__name__)
def test_every_shipped_config_is_valid(module):
    settings = settings_lib.from_config(module.get_config())
    assert isinstance(settings, settings_lib.Settings)
    assert isinstance(settings.eval.attacker, settings_lib.Attacker)


def test_values_arrive_typed_and_frozen():
    settings = settings_lib.from_config(tiny.get_config())
    # Lists and tuples in a config become tuples (hashable, like the modules' fields).
    assert settings.model.widths == (8, 16, 32)
    assert settings.model.use_skips == (True, True)
    assert settings.model.key_attributes == ("Smiling", "Eyeglasses")
    assert settings.eval.security.jpeg_qualities == (95, 75)
    # An int where a float is meant becomes a float; None stays None where allowed.
    assert settings.loss.recovery == 100.0 and isinstance(settings.loss.recovery, float)
    assert settings.train.generator_batch_size is None
    assert settings.train.generator_images == 8  # None: the whole batch
    assert settings.eval.attacker.attribute_input_size is None
    assert settings.eval.report.realism is True
    assert settings.eval.realism.logistic_l2 == 0.01 and settings.eval.realism.cnn_steps == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.train.num_steps = 7  # type: ignore[misc]


def test_json_lists_become_tuples_too():
    """config.json has lists: a dict built from it gives the same settings."""
    config = tiny.get_config()
    from_json = json.loads(config.to_json_best_effort())
    assert isinstance(from_json["model"]["widths"], list)
    assert settings_lib.from_config(from_json) == settings_lib.from_config(config)


def test_section_builds_one_section():
    model = settings_lib.section(settings_lib.Model, tiny.get_config().model, "model")
    assert model == settings_lib.from_config(tiny.get_config()).model
    as_dict = dict(tiny.get_config().model.to_dict(), widths=[8, 16, 32])
    assert settings_lib.section(settings_lib.Model, as_dict, "model").widths == (8, 16, 32)
    with pytest.raises(SettingsError, match=r"missing config field\(s\): model.latent_dim"):
        settings_lib.section(
            settings_lib.Model, {k: v for k, v in as_dict.items() if k != "latent_dim"}, "model"
        )


def test_an_unknown_field_is_named():
    config = tiny_config()
    with config.unlocked():
        config.loss.foo = 1.0
    with pytest.raises(SettingsError, match=r"^unknown config field\(s\): loss.foo$"):
        settings_lib.from_config(config)
    with config.unlocked():
        config.eval.security.bar = 1
        del config.loss["foo"]
    with pytest.raises(SettingsError, match=r"unknown config field\(s\): eval.security.bar"):
        settings_lib.from_config(config)


def test_a_missing_field_is_named():
    plain = tiny_config().to_dict()
    del plain["train"]["ema_decay"]
    with pytest.raises(SettingsError, match=r"^missing config field\(s\): train.ema_decay$"):
        settings_lib.from_config(plain)
    plain = tiny_config().to_dict()
    del plain["mesh"]
    with pytest.raises(SettingsError, match=r"missing config field\(s\): mesh$"):
        settings_lib.from_config(plain)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train.ema_decay", 1.5, r"train.ema_decay must be in \[0, 1\), got 1.5"),
        ("model.use_skips", (True,),
         r"model.use_skips must be one flag per level above the deepest .*, got \(True,\)"),
        ("model.classifier_embedding_head", "attention",
         r"model.classifier_embedding_head must be 'flatten' or 'pooled', got 'attention'"),
        ("model.password_bits", 12, r"model.password_bits must be a multiple of 8"),
        ("model.key_attributes", ("Smiling", "Smiling"), r"model.key_attributes must be"),
        ("model.key_attributes", ("Grinning",), r"model.key_attributes: "),
        ("data.name", "imagenet", r"data.name must be 'synth_faces' or 'celeba', got 'imagenet'"),
        ("loss.recovery", -1.0, r"loss.recovery must be >= 0, got -1.0"),
        ("loss.critic_recolour", 1.5, r"loss.critic_recolour must be in \[0, 1\], got 1.5"),
        ("optim.b1", 1.0, r"optim.b1 must be in \[0, 1\), got 1.0"),
        ("train.num_steps", 0, r"train.num_steps must be >= 1, got 0"),
        ("train.generator_batch_size", 3,
         r"train.generator_batch_size must be a divisor of train.global_batch_size \(8\)"),
        ("mesh.fsdp", 0, r"mesh.fsdp must be >= 1, got 0"),
        ("eval.split", "dev", r"eval.split must be 'train', 'validation' or 'test', got 'dev'"),
        ("eval.attacker.far", 0.0, r"eval.attacker.far must be in \(0, 1\), got 0.0"),
        ("eval.attacker.num_steps", -5, r"eval.attacker.num_steps must be >= 1, got -5"),
        ("eval.report.max_people", 0, r"eval.report.max_people must be >= 1, got 0"),
        ("eval.num_images", 0, r"eval.num_images must be >= 1, got 0"),
        ("train.num_steps", -5, r"train.num_steps must be >= 1, got -5"),
        ("eval.realism.cnn_steps", 0, r"eval.realism.cnn_steps must be >= 1, got 0"),
        ("eval.realism.kid_subset_size", 0, r"eval.realism.kid_subset_size must be >= 1"),
        ("eval.realism.logistic_l2", -0.1, r"eval.realism.logistic_l2 must be >= 0, got -0.1"),
        ("eval.report.realism", 1, r"eval.report.realism must be bool, got 1"),
        # Wrong types: never silently converted.
        ("train.num_steps", 6.5, r"train.num_steps must be int, got 6.5"),
        ("train.num_steps", True, r"train.num_steps must be int, got True"),
        ("model.residual_output", 1, r"model.residual_output must be bool, got 1"),
        ("model.widths", "8,16,32", r"model.widths must be a list, got '8,16,32'"),
        ("model.widths", (8, 16.5, 32), r"model.widths\[1\] must be int, got 16.5"),
        ("data.data_dir", 3, r"data.data_dir must be str, got 3"),
    ],
)  # fmt: skip
def test_a_bad_value_is_named(field, value, message):
    plain = tiny_config().to_dict()
    *sections, name = field.split(".")
    block = plain
    for section in sections:
        block = block[section]
    block[name] = value
    with pytest.raises(SettingsError, match=message):
        settings_lib.from_config(plain)


def test_settings_error_is_a_value_error():
    """main.py reports ValueErrors as one line; a bad config must be one of them."""
    assert issubclass(SettingsError, ValueError)


def _old_config() -> dict:
    """A config.json as an older version wrote it: no model.recovery (nor the other
    fields it predates), and retired experiment settings at their neutral values."""
    raw = json.loads(tiny.get_config().to_json_best_effort())
    for section, field in [("model", "recovery"), ("model", "key_features"),
                           ("model", "classifier_embedding_head"),
                           ("train", "generator_batch_size"), ("train", "ema_decay"),
                           ("loss", "critic_recolour"), ("eval", "realism")]:  # fmt: skip
        del raw[section][field]
    del raw["eval"]["report"]["realism"]
    raw["model"].update(warp_pixels=0.0, linear_range=0.0)
    raw["loss"].update(critic_shift=0, identity_target="photo", identity_power=1.0)
    return raw


def test_upgrade_fills_what_an_old_run_predates_and_drops_neutral_retired_fields():
    raw = _old_config()
    upgraded = config_upgrade.upgrade(raw)
    assert upgraded["model"]["recovery"] == "conditioned"  # what the old code ran
    assert upgraded["model"]["key_features"] == 0
    assert upgraded["model"]["classifier_embedding_head"] == "pooled"
    assert upgraded["train"]["generator_batch_size"] is None
    assert upgraded["train"]["ema_decay"] == 0.0
    assert upgraded["loss"]["critic_recolour"] == 0.0
    # No realism judge before it existed; its settings get this version's defaults.
    assert upgraded["eval"]["report"]["realism"] is False
    assert upgraded["eval"]["realism"] == default.get_config().eval.realism.to_dict()
    assert "realism" not in raw["eval"]["report"] and "realism" not in raw["eval"]
    for field in ("warp_pixels", "linear_range"):
        assert field not in upgraded["model"]
    for field in ("critic_shift", "identity_target", "identity_power"):
        assert field not in upgraded["loss"]
    # Fields the run has keep their values; the input is not changed.
    assert upgraded["model"]["widths"] == [8, 16, 32]
    assert "warp_pixels" in raw["model"] and "recovery" not in raw["model"]
    settings = settings_lib.from_config(upgraded)
    assert settings.model.recovery == "conditioned" and settings.model.key_features == 0
    assert settings.eval.report.realism is False


def test_upgrade_keeps_a_current_config_as_it_is():
    current = json.loads(tiny.get_config().to_json_best_effort())
    assert config_upgrade.upgrade(current) == current


@pytest.mark.parametrize(
    "section, field, value",
    [("model", "warp_pixels", 2.0), ("model", "linear_range", 0.8),
     ("loss", "identity_target", "person"), ("loss", "identity_removal", 1.0),
     ("loss", "critic_shift", 2)],
)  # fmt: skip
def test_upgrade_refuses_a_retired_setting_that_was_used(section, field, value):
    raw = _old_config()
    raw[section][field] = value
    with pytest.raises(
        SettingsError, match=rf"{section}.{field} is a retired experiment setting .*{value!r}"
    ):
        config_upgrade.upgrade(raw)


def test_upgrade_refuses_what_is_not_a_config():
    with pytest.raises(SettingsError, match="must be a JSON object, got list"):
        config_upgrade.upgrade([1, 2])
