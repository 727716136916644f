"""The train step: key sampling, the dual pass, the losses' wiring, and sharded ==
single-device.

The sharded tests read this file run as a script in a subprocess with 8 fake CPU devices
(XLA_FLAGS must be set before JAX starts; runs.sharded_job, started when the session
begins); the script prints one JSON line that the tests here check. Compiles are slow on
CPU, so it compiles each train step once and every sharding test reads the same run.
"""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import NUM_IDENTITIES, fast_jit, tiny_settings

from sdn_jax import augment, keys, losses, objectives, sharding, steps, training_setup
from sdn_jax import settings as settings_lib
from sdn_jax import state as state_lib
from sdn_jax.models import sdn


def _replace(settings, section: str, **changes):
    """`settings` with fields of one section changed (a frozen dataclass: a copy)."""
    return dataclasses.replace(
        settings, **{section: dataclasses.replace(getattr(settings, section), **changes)}
    )


# ------------------------------------------------------------------------- sample_keys


@pytest.fixture(scope="module")
def sample_2048(settings):
    return fast_jit(lambda rng: objectives.sample_keys(rng, 2048, settings))


@pytest.fixture(scope="module")
def sampled(sample_2048):
    return jax.device_get(sample_2048(jax.random.key(3)))


def test_sample_keys_wrong_key_never_equals_right_key(sampled, settings):
    k, a = settings.model.password_bits, len(settings.model.key_attributes)
    shapes = dict(password=k, password2=k, wrong_password=k, attributes=a, wrong_attributes=a)
    for name, width in shapes.items():
        assert sampled[name].shape == (2048, width), name
        assert set(np.unique(sampled[name])) == {-0.5, 0.5}, name
    same_password = (sampled["wrong_password"] == sampled["password"]).all(-1)
    same_attributes = (sampled["wrong_attributes"] == sampled["attributes"]).all(-1)
    assert not (same_password & same_attributes).any()
    # Some wrong keys differ by the attributes alone, some by only a few password bits.
    assert same_password.mean() > 0.1
    bits_off = (sampled["wrong_password"] != sampled["password"]).sum(-1)
    few = same_attributes & (bits_off >= 1) & (bits_off <= keys.FEW_BITS_MAX)
    assert few.mean() > 0.1
    # The second password is an independent draw (16 bits: equal with p = 2^-16).
    assert (sampled["password2"] != sampled["password"]).any(-1).mean() > 0.99


def test_sample_keys_is_a_function_of_the_rng(sampled, sample_2048):
    again = jax.device_get(sample_2048(jax.random.key(3)))
    other = jax.device_get(sample_2048(jax.random.key(4)))
    for name in sampled:
        np.testing.assert_array_equal(again[name], sampled[name])
        assert (other[name] != sampled[name]).any(), name


def test_ramp_rises_after_the_classifier_warm_up(settings):
    """0 until the C warm-up ends, then linearly to 1 over loss.ramp_steps, then 1."""
    settings = _replace(settings, "train", classifier_warmup_steps=10)
    settings = _replace(settings, "loss", ramp_steps=4)
    got = [float(objectives.ramp(jnp.int32(step), settings)) for step in (0, 10, 11, 12, 14, 99)]
    np.testing.assert_allclose(got, [0.0, 0.0, 0.25, 0.5, 1.0, 1.0])


# --------------------------------------------------------------------------- dual_pass


@pytest.fixture(scope="module")
def dual_pass_and_reference(networks):
    """dual_pass, and each of its four outputs recomputed one decoder call at a time."""

    @fast_jit
    def run(params, images, key):
        out = sdn.dual_pass(networks, params, images, key)

        def generate(inputs, direction, password, attributes):
            condition = keys.condition_vector(direction, password, attributes)
            return sdn.generate(networks, params, inputs, condition)

        a = key["attributes"]
        x_a = out.anonymized
        reference = dict(
            anonymized=generate(images, keys.ANONYMIZE, key["password"], a),
            anonymized2=generate(images, keys.ANONYMIZE, key["password2"], a),
            recovered=generate(x_a, keys.RECOVER, key["password"], a),
            wrong=generate(x_a, keys.RECOVER, key["wrong_password"], key["wrong_attributes"]),
        )
        return out._asdict(), reference

    return run


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    images[:, 0] = 1.0  # saturated pixels stay finite through the residual arctanh
    images[:, 1] = -1.0
    return jnp.asarray(images)


@pytest.fixture(scope="module")
def noisy_params(params):
    """Decoder noise: no zero or tiny layer can hide the keys' effect."""
    rng = np.random.default_rng(1)
    noise = lambda x: jnp.asarray(x + 0.05 * rng.standard_normal(x.shape), x.dtype)
    return {**params, "decoder": jax.tree.map(noise, params["decoder"])}


def test_dual_pass_wiring_and_range(dual_pass_and_reference, noisy_params, images, settings):
    key = objectives.sample_keys(jax.random.key(5), images.shape[0], settings)
    out, reference = jax.device_get(dual_pass_and_reference(noisy_params, images, key))
    assert list(out) == ["anonymized", "anonymized2", "recovered", "wrong"]
    for name in ("anonymized", "anonymized2", "recovered", "wrong"):
        assert np.isfinite(out[name]).all() and np.abs(out[name]).max() <= 1.0, name
        # x_A, x_A2 from x; x_R and x_W from the anonymized image with the right/wrong key.
        np.testing.assert_allclose(out[name], reference[name], atol=2e-5, err_msg=name)
    # The keys matter: two passwords, and the right vs a wrong key, give different images.
    assert np.abs(out["anonymized"] - out["anonymized2"]).max() > 1e-3
    assert np.abs(out["recovered"] - out["wrong"]).max() > 1e-3


def test_dual_pass_with_zero_output_layer_is_the_identity_chain(
    dual_pass_and_reference, params, images, settings
):
    """Zero output layer: G(., x) = 0.98 x, so x_A = 0.98 x and x_R = 0.98 x_A (not 0.98 x)."""
    decoder = params["decoder"]
    names = [k for k, v in decoder.items() if k.startswith("Conv") and v["kernel"].shape[-1] == 3]
    assert len(names) == 1, names
    zero = jax.tree.map(jnp.zeros_like, decoder[names[0]])
    params = {**params, "decoder": {**decoder, names[0]: zero}}
    key = objectives.sample_keys(jax.random.key(5), images.shape[0], settings)
    out, _ = jax.device_get(dual_pass_and_reference(params, images, key))
    x = np.asarray(images)
    np.testing.assert_allclose(out["anonymized"], 0.98 * x, atol=1e-5)
    np.testing.assert_allclose(out["anonymized2"], 0.98 * x, atol=1e-5)
    np.testing.assert_allclose(out["recovered"], 0.98 * out["anonymized"], atol=1e-5)
    np.testing.assert_allclose(out["wrong"], 0.98 * out["anonymized"], atol=1e-5)
    assert np.abs(out["recovered"] - x).max() < 0.05  # ~x


def test_scale_gradient_scales_only_the_gradient():
    x = jnp.asarray([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(sdn.scale_gradient(x, 0.6), x)
    grad = jax.grad(lambda v: jnp.sum(3.0 * sdn.scale_gradient(v, 0.6)))(x)
    np.testing.assert_allclose(grad, [1.8, 1.8, 1.8], rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(sdn.scale_gradient(v, 0.0)))(x), 0.0)


def _without_augmentation(settings):
    """The settings with C's recoloured copies and the critic's recoloured views off."""
    return _replace(settings, "loss", classifier_recolour=0.0, critic_recolour=0.0)


@pytest.mark.parametrize("recolour", [1.0, 0.5])
def test_classifier_recoloured_copies_join_as_positives(settings, networks, params, recolour):
    """loss.classifier_recolour: C's contrastive loss also sees a recoloured copy of the
    batch (same labels); its attribute terms stay on the clean images; no rng, no copy."""
    batch = _synthetic_batches(NUM_IDENTITIES, settings.data.image_size, count=1)[0]
    batch["identity"] = np.repeat(np.arange(4), 2).astype(np.int32)
    plain_settings = _without_augmentation(settings)
    augmented_settings = _replace(plain_settings, "loss", classifier_recolour=recolour)

    @fast_jit  # one program for the three: one compile
    def losses_of(b, rng):
        loss = lambda s, r: objectives.classifier_loss(params["classifier"], networks, b, s, r)  # noqa: E731
        return (
            loss(plain_settings, rng),
            loss(augmented_settings, None),
            loss(augmented_settings, rng),
        )

    (clean, (clean_metrics, _)), (no_rng, _), (_, (metrics, _)) = losses_of(
        batch, jax.random.key(3)
    )
    np.testing.assert_allclose(no_rng, clean, rtol=1e-6)
    for name in ("c_attributes", "c_key_attributes"):
        np.testing.assert_allclose(metrics[name], clean_metrics[name], rtol=1e-6)
    x = jnp.asarray(batch["image"])
    colour_rng, _ = jax.random.split(jax.random.key(3))
    copy = augment.recolour(colour_rng, x, recolour)
    assert float(jnp.abs(copy - x).mean()) > 0.01  # the copy really differs
    both = jnp.concatenate([x, copy])
    embeddings = fast_jit(sdn.apply, static_argnums=0)(
        networks["classifier"], params["classifier"], both
    ).embedding
    labels = jnp.concatenate([batch["identity"], batch["identity"]])
    expected = losses.supervised_contrastive(
        embeddings, labels, settings.loss.contrastive_temperature
    )
    np.testing.assert_allclose(metrics["c_contrastive"], expected, rtol=1e-5)
    assert abs(float(metrics["c_contrastive"]) - float(clean_metrics["c_contrastive"])) > 1e-3


def test_critic_recolour_changes_only_what_the_classifier_sees(settings, networks, params):
    """loss.critic_recolour: C reads the generated faces recoloured, the real batch as it
    is; the image terms (recovery, margins) are untouched, C's terms change; without an
    rng there is no recolouring."""
    batch = _synthetic_batches(NUM_IDENTITIES, settings.data.image_size, count=1)[0]
    key = objectives.sample_keys(jax.random.key(5), 8, settings)
    plain_settings = _without_augmentation(settings)
    x = jnp.asarray(batch["image"])
    generated = [x[::-1], -x, x * 0.5, x[:, ::-1]]
    np.testing.assert_array_equal(
        objectives.critic_inputs(jax.random.key(1), x, generated, 0.0),
        jnp.concatenate([x, *generated]),
    )
    np.testing.assert_array_equal(
        objectives.critic_inputs(None, x, generated, 1.0), jnp.concatenate([x, *generated])
    )
    viewed = objectives.critic_inputs(jax.random.key(1), x, generated, 1.0)
    np.testing.assert_array_equal(viewed[:8], x)
    assert bool(jnp.all(jnp.abs(viewed[8:] - jnp.concatenate(generated)).mean((1, 2, 3)) > 0))
    assert float(viewed.min()) >= -1.0 - 1e-6 and float(viewed.max()) <= 1.0 + 1e-6

    viewed_settings = _replace(plain_settings, "loss", critic_recolour=1.0)

    @fast_jit  # one program for the three (their G passes are shared): one compile
    def run(b, rng):
        loss = lambda s, r: objectives.generator_loss(  # noqa: E731
            {}, params, networks, b, key, jnp.int32(10**6), s, r
        )[1]["terms"]
        return loss(plain_settings, rng), loss(viewed_settings, rng), loss(viewed_settings, None)

    plain, views, no_rng = run(batch, jax.random.key(2))
    for name in ("recovery", "keep_anonymized", "wrong_distance", "change_anonymized"):
        np.testing.assert_allclose(views[name], plain[name], rtol=1e-6)
    for name in ("identity_embedding", "attributes", "recovered_embedding"):
        assert abs(float(views[name]) - float(plain[name])) > 1e-5, name
    np.testing.assert_allclose(no_rng["identity_embedding"], plain["identity_embedding"], rtol=1e-6)


def test_generator_loss_weights_and_ramps_its_terms(settings, networks, params):
    """The total is the weighted sum of the terms; before the ramp only the image terms
    (recovery and the three margins) count, after it every term does."""
    batch = _synthetic_batches(NUM_IDENTITIES, settings.data.image_size, count=1)[0]
    key = objectives.sample_keys(jax.random.key(5), 8, settings)
    loss = fast_jit(
        lambda b, step: objectives.generator_loss({}, params, networks, b, key, step, settings)
    )
    (start, aux), (late, late_aux) = loss(batch, jnp.int32(0)), loss(batch, jnp.int32(10**6))
    terms = {k: float(v) for k, v in aux["terms"].items()}
    w = settings.loss
    image_terms = (
        w.recovery * terms["recovery"]
        + w.keep_anonymized * terms["keep_anonymized"]
        + w.wrong_distance * terms["wrong_distance"]
        + w.change_anonymized * terms["change_anonymized"]
    )
    np.testing.assert_allclose(float(start), image_terms, rtol=1e-5)
    everything = image_terms + sum(
        getattr(w, name) * terms[name]
        for name in ("adversarial", "attributes", "identity_embedding", "club", "diversity",
                     "wrong_diversity", "key_information", "recovered_embedding")
    )  # fmt: skip
    np.testing.assert_allclose(float(late), everything, rtol=1e-5)
    assert sorted(terms) == sorted(
        ["adversarial", "recovery", "keep_anonymized", "change_anonymized", "wrong_distance",
         "attributes", "identity_embedding", "club", "diversity", "wrong_diversity",
         "key_information", "recovered_embedding"]
    )  # fmt: skip
    # The fakes are x_A, x_R, x_W of the batch, detached for D and C.
    assert late_aux["fakes"].shape == (24, *batch["image"].shape[1:])


NUM_STEPS = 3  # the first step's learning rate is 0 (warm-up from 0): step 3 reads step 2's update
# A data-only mesh is the same program with fsdp = 1: its sharding is checked without
# training on it (data8_sharded_leaves).
MESHES = (("one_device", 1, 1), ("data4_fsdp2", 8, 2))


def _fresh_state(settings, params):
    """The optimisers and create_state's state at key 0, from the session's params (the
    same init_params at key 0): no init compile per test."""
    optimizers = state_lib.build_optimizers(settings)
    kept = state_lib.INFERENCE_NETWORKS if settings.train.ema_decay > 0 else ()
    state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={name: optimizers[name].init(params[name]) for name in state_lib.NETWORKS},
        ema_params={name: params[name] for name in kept},
    )
    return optimizers, state


def test_fresh_state_is_create_states(settings, networks, params):
    optimizers, state = _fresh_state(settings, params)
    created = jax.eval_shape(
        lambda: state_lib.create_state(jax.random.key(0), networks, optimizers, settings)
    )
    assert jax.tree.structure(created) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(created), jax.tree.leaves(state)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)


def test_classifier_warmup_step_trains_only_the_classifier(settings, networks, params):
    optimizers, state = _fresh_state(settings, params)
    batch = _synthetic_batches(NUM_IDENTITIES, settings.data.image_size, count=1)[0]
    batch["identity"] = np.repeat(np.arange(4), 2).astype(np.int32)  # positives: pairs
    warmup = fast_jit(steps.make_classifier_warmup_step(networks, optimizers, settings))
    new_state, metrics = warmup(warmup(state, batch)[0], batch)  # step 0's rate is 0
    assert int(new_state.step) == 2
    for name in state_lib.NETWORKS:
        moved = max(map(_max_abs, jax.tree.leaves(state.params[name]),
                        jax.tree.leaves(new_state.params[name])))  # fmt: skip
        assert (moved > 0) == (name == "classifier"), name
    assert np.isfinite(float(metrics["loss/c_contrastive"]))
    assert float(metrics["loss/c_contrastive"]) > 0  # random embeddings: pairs not yet tidy
    assert 0.0 <= float(metrics["loss/c_train_key_attribute_accuracy"]) <= 1.0
    assert "loss/g_total" not in metrics


def test_update_ema_ramps_up_then_holds_the_decay(settings):
    settings = _replace(settings, "train", ema_decay=0.9, classifier_warmup_steps=100)
    params = {"encoder": {"w": jnp.full(3, 10.0)}, "decoder": {"b": jnp.ones(2)}, "club": {}}
    ema = {"encoder": {"w": jnp.zeros(3)}, "decoder": {"b": jnp.zeros(2)}}
    # The first full step (after the C warm-up) takes 0.9 of the params: decay 1/10.
    first = steps.update_ema(ema, params, jnp.int32(100), settings)
    np.testing.assert_allclose(first["encoder"]["w"], 9.0, rtol=1e-6)
    np.testing.assert_allclose(first["decoder"]["b"], 0.9, rtol=1e-6)
    # Ten full steps in: decay 11/20; late in the run: the configured 0.9.
    tenth = steps.update_ema(ema, params, jnp.int32(110), settings)
    np.testing.assert_allclose(tenth["encoder"]["w"], 10.0 * 9 / 20, rtol=1e-6)
    late = steps.update_ema(ema, params, jnp.int32(5000), settings)
    np.testing.assert_allclose(late["encoder"]["w"], 1.0, rtol=1e-6)
    assert sorted(late) == ["decoder", "encoder"]  # only the averaged networks
    assert steps.update_ema({}, params, jnp.int32(5000), settings) == {}  # averaging off


@pytest.mark.parametrize("decay, kept", [(0.0, []), (0.99, ["decoder", "encoder"])])
def test_create_state_keeps_averages_of_encoder_and_decoder_only_when_asked(
    settings, networks, decay, kept
):
    settings = _replace(settings, "train", ema_decay=decay)
    optimizers = state_lib.build_optimizers(settings)
    state = jax.eval_shape(
        lambda: state_lib.create_state(jax.random.key(0), networks, optimizers, settings)
    )
    assert sorted(state.ema_params) == kept
    merged = state_lib.inference_params(state)
    assert sorted(merged) == sorted(state_lib.NETWORKS)
    for name in kept:
        assert merged[name] is state.ema_params[name]


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_ema_decay_out_of_range_is_refused(decay):
    with pytest.raises(settings_lib.SettingsError, match=r"train.ema_decay must be in \[0, 1\)"):
        tiny_settings(**{"train.ema_decay": decay})


def test_learning_rate_schedule_warms_up_then_decays(settings):
    """Linear from 0 over optim.warmup_steps (2 in the tiny config), the peak, then a
    cosine down to decay_to (0.1) of the peak at train.num_steps (6)."""
    schedule = state_lib.learning_rate_schedule(settings)
    peak = settings.optim.learning_rate
    assert (settings.optim.warmup_steps, settings.train.num_steps) == (2, 6)
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (0, 1, 2, 4, 6, 100)],
        [0.0, peak / 2, peak, peak * (0.1 + 0.9 * 0.5), peak * 0.1, peak * 0.1],
        rtol=1e-5,
    )


def test_generator_share_takes_every_mth_image_and_checks_the_sizes():
    batch = {"image": np.arange(16), "identity": np.arange(16) // 4}
    whole = tiny_settings(**{"train.global_batch_size": 16, "train.generator_batch_size": None})
    assert whole.train.generator_images == 16
    assert objectives.generator_share(batch, whole) is batch
    # One photo of each of the 4 people.
    share = tiny_settings(**{"train.global_batch_size": 16, "train.generator_batch_size": 4})
    assert share.train.generator_images == 4
    np.testing.assert_array_equal(objectives.generator_share(batch, share)["image"], [0, 4, 8, 12])
    np.testing.assert_array_equal(
        objectives.generator_share(batch, share)["identity"], [0, 1, 2, 3]
    )
    for bad in (5, 32, -4):
        with pytest.raises(
            settings_lib.SettingsError,
            match=r"train.generator_batch_size must be a divisor of train.global_batch_size",
        ):
            tiny_settings(**{"train.global_batch_size": 16, "train.generator_batch_size": bad})


def test_a_zero_generator_batch_size_is_refused():
    """0 images for G is a mistake, not "the whole batch" (that is None)."""
    with pytest.raises(
        settings_lib.SettingsError,
        match=r"train.generator_batch_size must be a divisor of train.global_batch_size",
    ):
        tiny_settings(**{"train.global_batch_size": 16, "train.generator_batch_size": 0})


def test_generator_trains_on_its_share_and_the_classifier_on_the_whole_batch(
    networks, params, monkeypatch
):
    """The step's wiring, traced (jax.eval_shape: no compile): G's loss and D's real images
    get every second image, C's real-image loss all 16 (which images a share holds:
    test_generator_share_takes_every_mth_image_and_checks_the_sizes)."""
    settings = tiny_settings(**{"train.global_batch_size": 16, "train.generator_batch_size": 8})
    optimizers, state = _fresh_state(settings, params)
    batch = _synthetic_batches(NUM_IDENTITIES, settings.data.image_size, batch=16, count=1)[0]
    seen = {}

    def spy(name, function, argument):
        def wrapped(*args, **kwargs):
            tree = args[argument]
            images = tree["image"] if isinstance(tree, dict) else tree
            seen.setdefault(name, []).append(images.shape[0])
            return function(*args, **kwargs)

        monkeypatch.setattr(objectives, name, wrapped)

    spy("generator_loss", objectives.generator_loss, 3)
    spy("discriminator_classifier_loss", objectives.discriminator_classifier_loss, 2)
    spy("classifier_loss", objectives.classifier_loss, 2)
    spy("generator_share", objectives.generator_share, 0)
    step = steps.make_train_step(networks, optimizers, settings, jax.random.key(7))
    new_state, metrics = jax.eval_shape(step, state, batch)
    assert seen["generator_loss"] == [8] and seen["discriminator_classifier_loss"] == [16]
    assert seen["classifier_loss"] == [16]  # C's real-image terms: the whole batch
    assert 16 in seen["generator_share"]  # D's real images: the share of the whole batch
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics["loss/g_total"].shape == ()


def _synthetic_batches(num_identities, size, batch=8, count=NUM_STEPS):
    rng = np.random.default_rng(0)
    return [
        dict(
            image=rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
            identity=rng.integers(0, num_identities, batch).astype(np.int32),
            attributes=rng.random((batch, 40)) < 0.5,
        )
        for _ in range(count)
    ]


def _max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0))


def _adam_moments(opt_state, which):
    """The leaves of Adam's mu (or nu) in one network's optimiser state."""
    flat = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    return [leaf for path, leaf in flat if jax.tree_util.GetAttrKey(which) in path]


def _error(fn):
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def _sharded_worker() -> dict:
    """Runs NUM_STEPS train steps on each mesh from the same state and batches, each
    with the trainer's own set-up (training_setup.build)."""
    devices = jax.devices()
    assert len(devices) == 8, devices
    # Full steps from step 0: every network moves.
    settings = tiny_settings(**{"train.classifier_warmup_steps": 0})
    batches = _synthetic_batches(NUM_IDENTITIES, settings.data.image_size)
    fast = {"compiler_options": {"xla_backend_optimization_level": 0}}
    initial, runs = None, {}
    for name, count, fsdp in MESHES:
        mesh = sharding.make_mesh(settings_lib.Mesh(data=-1, fsdp=fsdp), devices[:count])
        setup = training_setup.build(settings, mesh)
        if initial is None:  # one device: the reference state
            state = setup.create_state()
            initial, created_diff = jax.device_get(state), 0.0
        elif fsdp > 1:  # created already sharded, as train.py does
            state = setup.create_state()
            created_diff = max(map(_max_abs, jax.tree.leaves(initial), jax.tree.leaves(state)))
        else:
            state, created_diff = jax.device_put(initial, setup.state_sharding), 0.0
        train_step = setup.train_step(**fast)
        metrics = []
        for batch in batches:
            batch = setup.global_batch(batch)
            state, step_metrics = train_step(state, batch)
            metrics.append({k: float(v) for k, v in step_metrics.items()})
        sharded_leaves = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state))
        runs[name] = dict(
            metrics=metrics,
            state=jax.device_get(state),
            created_diff=created_diff,
            sharded_leaves=sharded_leaves,
            batch_shards=batch["image"].shape[0]
            // batch["image"].sharding.shard_shape(batch["image"].shape)[0],
        )
        print(f"{name}: done", file=sys.stderr, flush=True)

    reference = runs["one_device"]
    report = {"runs": {}}
    for name, run in runs.items():
        ref_params, params = reference["state"].params, run["state"].params
        entry = dict(
            created_diff=run["created_diff"],
            sharded_leaves=run["sharded_leaves"],
            batch_shards=run["batch_shards"],
            step=int(run["state"].step),
            metric_names=sorted(run["metrics"][0]),
            metrics_abs_diff=max(
                abs(a[k] - b[k]) for a, b in zip(reference["metrics"], run["metrics"]) for k in a
            ),
            metrics_rel_diff=max(
                abs(a[k] - b[k]) / max(1.0, abs(a[k]))
                for a, b in zip(reference["metrics"], run["metrics"])
                for k in a
            ),
            metrics_finite=all(np.isfinite(v) for m in run["metrics"] for v in m.values()),
            params_diff={
                n: max(map(_max_abs, jax.tree.leaves(ref_params[n]), jax.tree.leaves(params[n])))
                for n in ref_params
            },
            params_moved={
                n: max(map(_max_abs, jax.tree.leaves(initial.params[n]), jax.tree.leaves(p)))
                for n, p in params.items()
            },
            ema_diff={
                n: max(map(_max_abs, jax.tree.leaves(e), jax.tree.leaves(ema)))
                for (n, e), ema in zip(
                    reference["state"].ema_params.items(), run["state"].ema_params.values()
                )
            },
            # The averages lag the params: they moved, but not all the way.
            ema_moved={
                n: max(map(_max_abs, jax.tree.leaves(initial.params[n]), jax.tree.leaves(e)))
                for n, e in run["state"].ema_params.items()
            },
            ema_to_params={
                n: max(map(_max_abs, jax.tree.leaves(params[n]), jax.tree.leaves(e)))
                for n, e in run["state"].ema_params.items()
            },
        )
        for which in ("mu", "nu"):  # Adam's moments: linear / quadratic in the gradients
            entry[f"{which}_rel_diff"] = {}
            for n in ref_params:
                ref = _adam_moments(reference["state"].opt_state[n], which)
                got = _adam_moments(run["state"].opt_state[n], which)
                # A network all of whose terms are still ramped out has zero moments.
                scale = max(float(np.max(np.abs(x))) for x in ref) or 1.0
                entry[f"{which}_rel_diff"][n] = max(map(_max_abs, ref, got)) / scale
        report["runs"][name] = entry

    mesh8 = sharding.make_mesh(settings.mesh, devices)
    batch12 = tiny_settings(**{"train.global_batch_size": 12})
    share12 = tiny_settings(**{"train.global_batch_size": 24, "train.generator_batch_size": 12})
    bad_mesh = lambda data, fsdp: lambda: sharding.make_mesh(_mesh(data, fsdp), devices)
    report["errors"] = dict(
        batch_12_on_8=_error(lambda: sharding.check_batch_size(12, mesh8)),
        batch_16_on_8=_error(lambda: sharding.check_batch_size(16, mesh8)),
        setup_batch_12_on_8=_error(lambda: training_setup.build(batch12, mesh8)),
        setup_share_12_on_8=_error(lambda: training_setup.build(share12, mesh8)),
        mesh_3x2=_error(bad_mesh(3, 2)),
        mesh_all_x3=_error(bad_mesh(-1, 3)),
        mesh_16x1=_error(bad_mesh(16, 1)),
        mesh_fsdp0=_error(bad_mesh(-1, 0)),
    )
    report["good_mesh_2x4"] = dict(sharding.make_mesh(_mesh(2, 4), devices).shape)
    data8 = training_setup.build(settings, sharding.make_mesh(_mesh(-1, 1), devices))
    report["data8_sharded_leaves"] = sum(
        not s.is_fully_replicated for s in jax.tree.leaves(data8.state_sharding)
    )
    return report


def _mesh(data, fsdp):
    """A mesh section as written, unchecked (make_mesh must refuse the bad ones itself)."""
    return settings_lib.Mesh(data=data, fsdp=fsdp)


@pytest.fixture(scope="module")
def sharded_report(sharded_job):
    """The report of this file run as a script with 8 devices (runs.sharded_job, started
    in the background when the session begins)."""
    result = sharded_job.result()
    assert result.returncode == 0, result.stderr[-5000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    report = json.loads(line[len("RESULT ") :])
    print(json.dumps(report, indent=1))  # the measured differences, shown with -s
    return report


@pytest.mark.parametrize("name", [m[0] for m in MESHES[1:]])
def test_sharded_step_matches_single_device(sharded_report, name):
    run, reference = sharded_report["runs"][name], sharded_report["runs"]["one_device"]
    assert run["step"] == reference["step"] == NUM_STEPS
    assert run["batch_shards"] == 8 and reference["batch_shards"] == 1
    assert run["metric_names"] == reference["metric_names"]
    assert run["metrics_finite"]
    # Every loss of every step, tightly (float32 reductions in another order).
    assert run["metrics_rel_diff"] < 1e-5, run["metrics_rel_diff"]
    # Gradients, through Adam's moments, relative to each network's largest moment. The
    # L1 and hinge terms' gradients are signs of near-zero differences in the first steps
    # (with inverse recovery x_R is x to ~1e-3), where reduction-order noise can flip
    # some pixels' signs: measured 5.5e-4 for the encoder (1.5e-4 with conditioned
    # recovery); a sharding bug (a wrong mean, a missing all-reduce) is O(1).
    for which in ("mu", "nu"):
        for network, diff in run[f"{which}_rel_diff"].items():
            assert diff < 2e-3, (which, network, diff)
    # Parameters: Adam turns float noise in a zero true gradient into a step of ~lr
    # (ENV_NOTES.md), so allow a quarter of one step at the peak lr (2e-4) per element.
    for network, diff in run["params_diff"].items():
        assert diff < 5e-5, (network, diff)
    assert sorted(run["ema_diff"]) == ["decoder", "encoder"]  # the tiny config keeps them
    for network, diff in run["ema_diff"].items():
        assert diff < 5e-5, (network, diff)


def test_fsdp_shards_the_parameters(sharded_report):
    fsdp = sharded_report["runs"]["data4_fsdp2"]
    assert fsdp["sharded_leaves"] > 0 and sharded_report["data8_sharded_leaves"] == 0
    assert fsdp["created_diff"] < 1e-6  # created sharded == created on one device


def test_training_moves_every_network(sharded_report):
    moved = sharded_report["runs"]["one_device"]["params_moved"]
    assert set(moved) == set(state_lib.NETWORKS)
    for network, change in moved.items():
        assert change > 1e-6, network
    run = sharded_report["runs"]["one_device"]
    for network in ("encoder", "decoder"):  # the moving averages follow, a step behind
        assert run["ema_moved"][network] > 1e-6, network
        assert run["ema_to_params"][network] > 1e-7, network


def test_batch_size_must_divide_the_mesh(sharded_report):
    errors = sharded_report["errors"]
    assert errors["batch_16_on_8"] is None
    assert "global_batch_size (12) must be divisible by the 8 devices" in errors["batch_12_on_8"]
    # The trainer's set-up checks both the whole batch and G's share against the mesh.
    assert (
        "train.global_batch_size (12) must be divisible by the 8 devices"
        in (errors["setup_batch_12_on_8"])
    )
    assert (
        "train.generator_batch_size (12) must be divisible by the 8 devices"
        in (errors["setup_share_12_on_8"])
    )


def test_impossible_meshes_raise(sharded_report):
    errors = sharded_report["errors"]
    for case in ("mesh_3x2", "mesh_all_x3", "mesh_16x1", "mesh_fsdp0"):
        assert errors[case] is not None and "must use all 8 devices" in errors[case], case
    assert sharded_report["good_mesh_2x4"] == {"data": 2, "fsdp": 4}


def test_make_mesh_rejects_impossible_shapes_here():
    """The same checks on this process's devices (one CPU unless XLA_FLAGS says more)."""
    count = len(jax.devices())
    for data, fsdp in ((count + 1, 1), (-1, count + 1), (-1, 0), (0, 1)):
        with pytest.raises(ValueError, match=f"must use all {count} devices"):
            sharding.make_mesh(_mesh(data, fsdp))


if __name__ == "__main__":
    print("RESULT " + json.dumps(_sharded_worker()))
