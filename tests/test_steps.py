"""The train step: key sampling, the dual pass, and sharded == single-device.

The sharded test runs this file as a script in a subprocess with 8 fake CPU devices
(XLA_FLAGS must be set before JAX starts); the script prints one JSON line that the
tests here check. Compiles are slow on CPU, so it compiles each train step once and
every sharding test reads the same run.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import NUM_IDENTITIES, fast_jit

from configs import tiny as tiny_config
from sdn_jax import augment, keys, losses, sharding, steps
from sdn_jax import state as state_lib

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- sample_keys


@pytest.fixture(scope="module")
def sampled(config):
    return jax.device_get(steps.sample_keys(jax.random.key(3), 2048, config))


def test_sample_keys_wrong_key_never_equals_right_key(sampled, config):
    k, a = config.model.password_bits, len(config.model.key_attributes)
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


def test_sample_keys_is_a_function_of_the_rng(sampled, config):
    again = jax.device_get(steps.sample_keys(jax.random.key(3), 2048, config))
    other = jax.device_get(steps.sample_keys(jax.random.key(4), 2048, config))
    for name in sampled:
        np.testing.assert_array_equal(again[name], sampled[name])
        assert (other[name] != sampled[name]).any(), name


# --------------------------------------------------------------------------- dual_pass


@pytest.fixture(scope="module")
def dual_pass_and_reference(networks):
    """dual_pass, and each of its four outputs recomputed one decoder call at a time."""

    @fast_jit
    def run(params, images, key):
        out = steps.dual_pass(networks, params, images, key)

        def generate(inputs, direction, password, attributes):
            latent = state_lib.apply(networks["encoder"], params["encoder"], inputs)
            condition = keys.condition_vector(direction, password, attributes)
            return state_lib.apply(
                networks["decoder"], params["decoder"], latent, condition, inputs
            )

        a = key["attributes"]
        x_a = out["anonymized"]
        reference = dict(
            anonymized=generate(images, keys.ANONYMIZE, key["password"], a),
            anonymized2=generate(images, keys.ANONYMIZE, key["password2"], a),
            recovered=generate(x_a, keys.RECOVER, key["password"], a),
            wrong=generate(x_a, keys.RECOVER, key["wrong_password"], key["wrong_attributes"]),
        )
        return out, reference

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


def test_dual_pass_wiring_and_range(dual_pass_and_reference, noisy_params, images, config):
    key = steps.sample_keys(jax.random.key(5), images.shape[0], config)
    out, reference = jax.device_get(dual_pass_and_reference(noisy_params, images, key))
    for name in ("anonymized", "anonymized2", "recovered", "wrong"):
        assert np.isfinite(out[name]).all() and np.abs(out[name]).max() <= 1.0, name
        # x_A, x_A2 from x; x_R and x_W from the anonymized image with the right/wrong key.
        np.testing.assert_allclose(out[name], reference[name], atol=2e-5, err_msg=name)
    # The keys matter: two passwords, and the right vs a wrong key, give different images.
    assert np.abs(out["anonymized"] - out["anonymized2"]).max() > 1e-3
    assert np.abs(out["recovered"] - out["wrong"]).max() > 1e-3


def test_dual_pass_with_zero_output_layer_is_the_identity_chain(
    dual_pass_and_reference, params, images, config
):
    """Zero output layer: G(., x) = 0.98 x, so x_A = 0.98 x and x_R = 0.98 x_A (not 0.98 x)."""
    decoder = params["decoder"]
    names = [k for k, v in decoder.items() if k.startswith("Conv") and v["kernel"].shape[-1] == 3]
    assert len(names) == 1, names
    zero = jax.tree.map(jnp.zeros_like, decoder[names[0]])
    params = {**params, "decoder": {**decoder, names[0]: zero}}
    key = steps.sample_keys(jax.random.key(5), images.shape[0], config)
    out, _ = jax.device_get(dual_pass_and_reference(params, images, key))
    x = np.asarray(images)
    np.testing.assert_allclose(out["anonymized"], 0.98 * x, atol=1e-5)
    np.testing.assert_allclose(out["anonymized2"], 0.98 * x, atol=1e-5)
    np.testing.assert_allclose(out["recovered"], 0.98 * out["anonymized"], atol=1e-5)
    np.testing.assert_allclose(out["wrong"], 0.98 * out["anonymized"], atol=1e-5)
    assert np.abs(out["recovered"] - x).max() < 0.05  # ~x


def _without_augmentation(config):
    """The config with C's augmented copies and the critic's views off."""
    config = config.copy_and_resolve_references()
    for name in ("classifier_damage", "classifier_recolour", "critic_flip", "critic_recolour"):
        config.loss[name] = 0.0
    config.loss.critic_shift = 0
    return config


@pytest.mark.parametrize("damage,recolour", [(1.0, 0.0), (0.0, 1.0), (0.5, 1.0)])
def test_classifier_augmented_copies_join_as_positives(config, networks, params, damage, recolour):
    """loss.classifier_damage / classifier_recolour: C's contrastive loss also sees an
    augmented copy of the batch (same labels); its attribute terms stay on the clean
    images; no rng, no copy."""
    batch = _synthetic_batches(NUM_IDENTITIES, config.data.image_size, count=1)[0]
    batch["identity"] = np.repeat(np.arange(4), 2).astype(np.int32)
    config = _without_augmentation(config)
    augmented_config = config.copy_and_resolve_references()
    augmented_config.loss.classifier_damage = damage
    augmented_config.loss.classifier_recolour = recolour
    loss = lambda cfg, rng=None: steps.classifier_loss(  # noqa: E731
        params["classifier"], networks, batch, cfg, rng
    )
    clean, (clean_metrics, _) = loss(config, jax.random.key(3))
    no_rng, _ = loss(augmented_config)
    np.testing.assert_allclose(no_rng, clean, rtol=1e-6)
    _, (metrics, _) = loss(augmented_config, jax.random.key(3))
    for name in ("c_attributes", "c_key_attributes"):
        np.testing.assert_allclose(metrics[name], clean_metrics[name], rtol=1e-6)
    x = jnp.asarray(batch["image"])
    colour_rng, damage_rng = jax.random.split(jax.random.key(3))
    copy = augment.damage_patch(damage_rng, augment.recolour(colour_rng, x, recolour), damage)
    assert float(jnp.abs(copy - x).mean()) > 0.01  # the copy really differs
    both = jnp.concatenate([x, copy])
    embeddings = state_lib.apply(networks["classifier"], params["classifier"], both).embedding
    labels = jnp.concatenate([batch["identity"], batch["identity"]])
    expected = losses.supervised_contrastive(
        embeddings, labels, config.loss.contrastive_temperature
    )
    np.testing.assert_allclose(metrics["c_contrastive"], expected, rtol=1e-5)
    assert abs(float(metrics["c_contrastive"]) - float(clean_metrics["c_contrastive"])) > 1e-3


def test_identity_target_person_pushes_away_from_the_batch_centroid(config, networks, params):
    """loss.identity_target "person": x_A's identity term is measured against the mean
    embedding of the person's photos in the batch, not against its own photo."""
    batch = _synthetic_batches(NUM_IDENTITIES, config.data.image_size, count=1)[0]
    batch["identity"] = np.repeat(np.arange(4), 2).astype(np.int32)
    key = steps.sample_keys(jax.random.key(5), 8, config)
    run = lambda cfg: steps.generator_loss({}, params, networks, batch, key, jnp.int32(10**6), cfg)[
        1
    ]

    person_config = config.copy_and_resolve_references()
    person_config.loss.identity_target = "person"
    photo, person = run(config), run(person_config)
    emb = state_lib.apply(
        networks["classifier"], params["classifier"],
        jnp.concatenate([jnp.asarray(batch["image"]), photo["fakes"][:8], photo["fakes"][16:]]),
    ).embedding  # fmt: skip
    f_x, e_a, e_w = jnp.split(emb, 3)
    centroid = losses.person_centroids(f_x, jnp.asarray(batch["identity"]))
    expected = losses.dissimilarity(e_a, centroid) + losses.dissimilarity(e_w, centroid)
    np.testing.assert_allclose(person["terms"]["identity_embedding"], expected, rtol=1e-4)
    assert abs(float(person["terms"]["identity_embedding"])
               - float(photo["terms"]["identity_embedding"])) > 1e-4  # fmt: skip
    person_config.loss.identity_target = "people"
    with pytest.raises(ValueError, match="identity_target must be 'photo' or 'person'"):
        run(person_config)


def test_critic_views_change_only_what_the_classifier_sees(config, networks, params):
    """loss.critic_shift / critic_flip / critic_recolour: C reads each generated face
    through its own random view, the real batch as it is; the image terms (recovery,
    margins) are untouched, C's terms change; without an rng there are no views."""
    batch = _synthetic_batches(NUM_IDENTITIES, config.data.image_size, count=1)[0]
    key = steps.sample_keys(jax.random.key(5), 8, config)
    config = _without_augmentation(config)
    x = jnp.asarray(batch["image"])
    generated = [x[::-1], -x, x * 0.5, x[:, ::-1]]
    np.testing.assert_array_equal(
        steps.critic_inputs(jax.random.key(1), x, generated, config),
        jnp.concatenate([x, *generated]),
    )
    viewed_config = config.copy_and_resolve_references()
    viewed_config.loss.critic_shift = 2
    viewed_config.loss.critic_flip = 0.5
    viewed_config.loss.critic_recolour = 1.0
    viewed = steps.critic_inputs(jax.random.key(1), x, generated, viewed_config)
    np.testing.assert_array_equal(viewed[:8], x)
    view_rng, colour_rng = jax.random.split(jax.random.key(1))
    expected = augment.recolour(
        colour_rng, augment.shift_and_flip(view_rng, jnp.concatenate(generated), 2, 0.5), 1.0
    )
    np.testing.assert_allclose(viewed[8:], expected, atol=1e-6)

    run = lambda cfg, rng: steps.generator_loss(  # noqa: E731
        {}, params, networks, batch, key, jnp.int32(10**6), cfg, rng
    )[1]["terms"]
    plain, views = run(config, jax.random.key(2)), run(viewed_config, jax.random.key(2))
    for name in ("recovery", "keep_anonymized", "wrong_distance", "change_anonymized"):
        np.testing.assert_allclose(views[name], plain[name], rtol=1e-6)
    for name in ("identity_embedding", "attributes", "recovered_embedding"):
        assert abs(float(views[name]) - float(plain[name])) > 1e-5, name
    no_rng = run(viewed_config, None)
    np.testing.assert_allclose(no_rng["identity_embedding"], plain["identity_embedding"], rtol=1e-6)


def test_damaged_identity_term_reads_faces_with_their_centre_damaged(config, networks, params):
    """loss.identity_damaged: the identity term once more, on x_A and x_W with a damaged
    face centre (every one of them), against the same target; off without an rng."""
    batch = _synthetic_batches(NUM_IDENTITIES, config.data.image_size, count=1)[0]
    key = steps.sample_keys(jax.random.key(5), 8, config)
    damaged_config = config.copy_and_resolve_references()
    damaged_config.loss.identity_damaged = 2.0
    run = lambda cfg, rng: steps.generator_loss(  # noqa: E731
        {}, params, networks, batch, key, jnp.int32(10**6), cfg, rng
    )
    total_plain, plain = run(config, jax.random.key(2))
    total, aux = run(damaged_config, jax.random.key(2))
    assert "identity_damaged" not in plain["terms"]
    assert "identity_damaged" not in run(damaged_config, None)[1]["terms"]
    x_a, x_w = aux["fakes"][:8], aux["fakes"][16:]
    damaged = augment.damage_patch(
        jax.random.fold_in(jax.random.key(2), 1), jnp.concatenate([x_a, x_w]), 1.0
    )
    assert float(jnp.mean(jnp.any(damaged != jnp.concatenate([x_a, x_w]), axis=(1, 2, 3)))) == 1.0
    apply = lambda images: (
        state_lib.apply(  # noqa: E731
            networks["classifier"], params["classifier"], images
        ).embedding
    )
    e_a, e_w = jnp.split(apply(damaged), 2)
    f_x = apply(jnp.asarray(batch["image"]))
    expected = losses.dissimilarity(e_a, f_x) + losses.dissimilarity(e_w, f_x)
    np.testing.assert_allclose(aux["terms"]["identity_damaged"], expected, rtol=1e-4)
    np.testing.assert_allclose(total - total_plain, 2.0 * expected, rtol=1e-3)


# ------------------------------------------------------------------ sharded == 1 device

NUM_STEPS = 3  # the first step's learning rate is 0 (warm-up from 0): step 3 reads step 2's update
MESHES = (("one_device", 1, 1), ("data8", 8, 1), ("data4_fsdp2", 8, 2))


def test_classifier_warmup_step_trains_only_the_classifier(config, networks):
    optimizers = state_lib.build_optimizers(config)
    state = fast_jit(lambda r: state_lib.create_state(r, networks, optimizers, config))(
        jax.random.key(0)
    )
    batch = _synthetic_batches(NUM_IDENTITIES, config.data.image_size, count=1)[0]
    batch["identity"] = np.repeat(np.arange(4), 2).astype(np.int32)  # positives: pairs
    warmup = fast_jit(steps.make_classifier_warmup_step(networks, optimizers, config))
    new_state, metrics = warmup(warmup(state, batch)[0], batch)  # step 0's rate is 0
    assert int(new_state.step) == 2
    for name in state_lib.NETWORKS:
        moved = max(map(_max_abs, jax.tree.leaves(state.params[name]),
                        jax.tree.leaves(new_state.params[name])))  # fmt: skip
        assert (moved > 0) == (name == "classifier"), name
    assert np.isfinite(float(metrics["loss/c_contrastive"]))
    assert float(metrics["loss/c_contrastive"]) > 0  # random embeddings: pairs not yet tidy
    assert 0.0 <= float(metrics["loss/c_train_key_attribute_accuracy"]) <= 1.0


def test_update_ema_ramps_up_then_holds_the_decay(config):
    config = config.copy_and_resolve_references()
    config.train.ema_decay, config.train.classifier_warmup_steps = 0.9, 100
    params = {"encoder": {"w": jnp.full(3, 10.0)}, "decoder": {"b": jnp.ones(2)}, "club": {}}
    ema = {"encoder": {"w": jnp.zeros(3)}, "decoder": {"b": jnp.zeros(2)}}
    # The first full step (after the C warm-up) takes 0.9 of the params: decay 1/10.
    first = steps.update_ema(ema, params, jnp.int32(100), config)
    np.testing.assert_allclose(first["encoder"]["w"], 9.0, rtol=1e-6)
    np.testing.assert_allclose(first["decoder"]["b"], 0.9, rtol=1e-6)
    # Ten full steps in: decay 11/20; late in the run: the configured 0.9.
    tenth = steps.update_ema(ema, params, jnp.int32(110), config)
    np.testing.assert_allclose(tenth["encoder"]["w"], 10.0 * 9 / 20, rtol=1e-6)
    late = steps.update_ema(ema, params, jnp.int32(5000), config)
    np.testing.assert_allclose(late["encoder"]["w"], 1.0, rtol=1e-6)
    assert sorted(late) == ["decoder", "encoder"]  # only the averaged networks
    assert steps.update_ema({}, params, jnp.int32(5000), config) == {}  # averaging off


@pytest.mark.parametrize("decay, kept", [(0.0, []), (0.99, ["decoder", "encoder"])])
def test_create_state_keeps_averages_of_encoder_and_decoder_only_when_asked(
    config, networks, decay, kept
):
    config = config.copy_and_resolve_references()
    config.train.ema_decay = decay
    optimizers = state_lib.build_optimizers(config)
    state = jax.eval_shape(
        lambda: state_lib.create_state(jax.random.key(0), networks, optimizers, config)
    )
    assert sorted(state.ema_params) == kept
    merged = state_lib.inference_params(state)
    assert sorted(merged) == sorted(state_lib.NETWORKS)
    for name in kept:
        assert merged[name] is state.ema_params[name]


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_ema_decay_out_of_range_is_refused(config, decay):
    config = config.copy_and_resolve_references()
    config.train.ema_decay = decay
    with pytest.raises(ValueError, match="train.ema_decay must be in"):
        state_lib.ema_decay(config)


def test_generator_share_takes_every_mth_image_and_checks_the_sizes(config):
    config = config.copy_and_resolve_references()
    batch = {"image": np.arange(16), "identity": np.arange(16) // 4}
    config.train.global_batch_size, config.train.generator_batch_size = 16, None
    assert steps.generator_batch_size(config) == 16
    assert steps.generator_share(batch, config) is batch
    config.train.generator_batch_size = 4  # one photo of each of the 4 people
    np.testing.assert_array_equal(steps.generator_share(batch, config)["image"], [0, 4, 8, 12])
    np.testing.assert_array_equal(steps.generator_share(batch, config)["identity"], [0, 1, 2, 3])
    for bad in (0, 5, 32):
        config.train.generator_batch_size = bad
        with pytest.raises(ValueError, match="generator_batch_size .* must divide"):
            steps.generator_batch_size(config)


def test_generator_trains_on_its_share_and_the_classifier_on_the_whole_batch(config, networks):
    config = config.copy_and_resolve_references()
    config.train.global_batch_size, config.train.generator_batch_size = 16, 8
    optimizers = state_lib.build_optimizers(config)
    state = fast_jit(lambda r: state_lib.create_state(r, networks, optimizers, config))(
        jax.random.key(0)
    )
    batch = _synthetic_batches(NUM_IDENTITIES, config.data.image_size, batch=16, count=1)[0]
    batch["identity"] = np.repeat(np.arange(4), 4).astype(np.int32)  # 4 people x 4 photos
    base_rng = jax.random.key(7)
    train_step = fast_jit(steps.make_train_step(networks, optimizers, config, base_rng))
    _, metrics = train_step(state, batch)

    # The same losses by hand: G on every second image, C's real-image terms on all 16.
    rng = jax.random.fold_in(base_rng, 0)
    share = {k: v[::2] for k, v in batch.items()}
    generator = {k: state.params[k] for k in state_lib.GENERATOR_NETWORKS}
    frozen = {k: v for k, v in state.params.items() if k not in generator}
    key = steps.sample_keys(rng, 8, config)
    g_total, _ = steps.generator_loss(
        generator, frozen, networks, share, key, state.step, config, jax.random.fold_in(rng, 2)
    )
    np.testing.assert_allclose(metrics["loss/g_total"], g_total, rtol=1e-4)
    classifier = state.params["classifier"]
    whole = steps.classifier_loss(classifier, networks, batch, config, jax.random.fold_in(rng, 1))
    part = steps.classifier_loss(classifier, networks, share, config, jax.random.fold_in(rng, 1))
    got = float(metrics["loss/c_contrastive"])
    np.testing.assert_allclose(got, whole[1][0]["c_contrastive"], rtol=1e-4)
    assert abs(got - float(part[1][0]["c_contrastive"])) > 1e-3


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
    """Runs NUM_STEPS train steps on each mesh from the same state and batches."""
    devices = jax.devices()
    assert len(devices) == 8, devices
    config = tiny_config.get_config()
    config.train.classifier_warmup_steps = 0  # Full steps from step 0: every network moves.
    networks = state_lib.build_networks(config, NUM_IDENTITIES)
    optimizers = state_lib.build_optimizers(config)
    init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
    create = lambda: state_lib.create_state(init_rng, networks, optimizers, config)
    abstract = jax.eval_shape(create)
    initial = jax.device_get(fast_jit(create)())
    batches = _synthetic_batches(NUM_IDENTITIES, config.data.image_size)
    runs = {}
    for name, count, fsdp in MESHES:
        start = time.perf_counter()
        config.mesh.fsdp = fsdp
        mesh = sharding.make_mesh(config.mesh, devices[:count])
        sharding.check_batch_size(config.train.global_batch_size, mesh)
        state_sharding = sharding.state_shardings(abstract, mesh)
        batch_sharding = sharding.batch_sharding(mesh)
        if fsdp > 1:  # created already sharded, as train.py does
            state = fast_jit(create, out_shardings=state_sharding)()
            created_diff = max(map(_max_abs, jax.tree.leaves(initial), jax.tree.leaves(state)))
        else:
            state, created_diff = jax.device_put(initial, state_sharding), 0.0
        train_step = fast_jit(
            steps.make_train_step(networks, optimizers, config, step_rng),
            in_shardings=(state_sharding, batch_sharding),
            out_shardings=(state_sharding, sharding.replicated(mesh)),
            donate_argnums=0,
        )
        metrics = []
        for batch in batches:
            batch = sharding.global_batch(batch, batch_sharding)
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
            seconds=time.perf_counter() - start,
        )
        print(f"{name}: {runs[name]['seconds']:.1f} s", file=sys.stderr, flush=True)

    reference = runs["one_device"]
    report = {"runs": {}}
    for name, run in runs.items():
        ref_params, params = reference["state"].params, run["state"].params
        entry = dict(
            seconds=run["seconds"],
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

    mesh8 = sharding.make_mesh(tiny_config.get_config().mesh, devices)
    bad_mesh = lambda data, fsdp: lambda: sharding.make_mesh(_mesh_config(data, fsdp), devices)
    report["errors"] = dict(
        batch_12_on_8=_error(lambda: sharding.check_batch_size(12, mesh8)),
        batch_16_on_8=_error(lambda: sharding.check_batch_size(16, mesh8)),
        mesh_3x2=_error(bad_mesh(3, 2)),
        mesh_all_x3=_error(bad_mesh(-1, 3)),
        mesh_16x1=_error(bad_mesh(16, 1)),
        mesh_fsdp0=_error(bad_mesh(-1, 0)),
    )
    report["good_mesh_2x4"] = dict(sharding.make_mesh(_mesh_config(2, 4), devices).shape)
    return report


def _mesh_config(data, fsdp):
    config = tiny_config.get_config().mesh
    config.data, config.fsdp = data, fsdp
    return config


@pytest.fixture(scope="module")
def sharded_report():
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, __file__],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
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
    fsdp, data = sharded_report["runs"]["data4_fsdp2"], sharded_report["runs"]["data8"]
    assert fsdp["sharded_leaves"] > 0 and data["sharded_leaves"] == 0
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
            sharding.make_mesh(_mesh_config(data, fsdp))


if __name__ == "__main__":
    print("RESULT " + json.dumps(_sharded_worker()))
