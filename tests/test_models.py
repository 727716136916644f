"""The networks: condition sensitivity, batch independence, identity at init, shapes of
contract (unit embeddings), config validation and parameter counts.

Compiles are slow on CPU, so one jitted function computes every network's outputs and
serves all tests: it compiles once for a batch of 8 and once for a batch of 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import NUM_IDENTITIES, fast_jit

from configs import tiny as tiny_config
from sdn_jax import keys
from sdn_jax import state as state_lib
from sdn_jax.models.classifier import Classifier
from sdn_jax.models.decoder import (
    _INPUT_SQUASH,
    Decoder,
    fourier_features,
    from_change_space,
    to_change_space,
)
from sdn_jax.models.encoder import Latent
from sdn_jax.models.warp import warp

BATCH = 8


def perturb(tree, seed, scale=0.05):
    """Adds N(0, scale^2) noise to every leaf, so that no zero-initialised or tiny layer
    can hide the condition's effect. numpy noise: no compiles."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(x + scale * rng.standard_normal(x.shape), x.dtype), tree
    )


def zero_output_layer(decoder_params):
    """The decoder's output conv (the only conv with 3 output channels) set to zero."""
    names = [
        k for k, v in decoder_params.items() if k.startswith("Conv") and v["kernel"].shape[-1] == 3
    ]
    assert len(names) == 1, names
    return {**decoder_params, names[0]: jax.tree.map(jnp.zeros_like, decoder_params[names[0]])}


@pytest.fixture(scope="module")
def noisy_params(params):
    return {**params, "decoder": perturb(params["decoder"], 1)}


@pytest.fixture(scope="module")
def all_outputs(networks, config):
    """Every network's eval output for (images, conditions), one compile per batch size."""

    @fast_jit
    def outputs(params, images, conditions):
        latent = state_lib.apply(networks["encoder"], params["encoder"], images)
        decoded = state_lib.apply(
            networks["decoder"], params["decoder"], latent, conditions, images
        )
        c = state_lib.apply(networks["classifier"], params["classifier"], images)
        mean, log_var = state_lib.apply(
            networks["club"], params["club"], c.embedding, config.model.embedding_dim
        )
        return dict(
            latent_vector=latent.vector,
            decoded=decoded,
            identity_logits=c.identity_logits,
            attribute_logits=c.attribute_logits,
            embedding=c.embedding,
            discriminator=state_lib.apply(
                networks["discriminator"], params["discriminator"], images
            ),
            key_logits=state_lib.apply(
                networks["key_predictor"], params["key_predictor"], images, decoded
            ),
            club_mean=mean,
            club_log_var=log_var,
        )

    return outputs


def random_images(seed, n, size):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    images[:, :2] = 1.0  # saturated pixels must stay finite through arctanh
    images[:, -2:] = -1.0
    return jnp.asarray(images)


def random_conditions(seed, n, config):
    rng = jax.random.key(seed)
    password = keys.random_passwords(rng, n, config.model.password_bits)
    attributes = keys.random_attributes(
        jax.random.fold_in(rng, 1), n, len(config.model.key_attributes)
    )
    return keys.condition_vector(keys.ANONYMIZE, password, attributes)


@pytest.fixture(scope="module")
def condition_batch(config):
    """One image in rows 0-3 under: a base condition, the direction flipped, one password
    bit flipped, one attribute flipped; rows 4-7 other images and random conditions."""
    size = config.data.image_size
    images = np.array(random_images(0, BATCH, size))
    images[1:4] = images[0]
    conditions = np.array(random_conditions(0, BATCH, config))
    conditions[1:4] = conditions[0]
    conditions[1, 0] = -conditions[0, 0]  # direction flag
    conditions[2, 1 + 5] = -conditions[0, 1 + 5]  # one password bit
    conditions[3, -1] = -conditions[0, -1]  # one key attribute
    return jnp.asarray(images), jnp.asarray(conditions)


@pytest.fixture(scope="module")
def batch_outputs(all_outputs, noisy_params, condition_batch):
    return jax.device_get(all_outputs(noisy_params, *condition_batch))


@pytest.mark.parametrize("row, what", [(1, "direction"), (2, "password bit"), (3, "attribute")])
def test_decoder_output_depends_on_every_part_of_the_condition(batch_outputs, row, what):
    decoded = batch_outputs["decoded"]
    change = np.abs(decoded[row] - decoded[0])
    assert change.max() > 1e-3, f"flipping the {what} did not change the decoder output"
    # The encoder saw the same image: only the condition differs.
    np.testing.assert_allclose(
        batch_outputs["latent_vector"][row], batch_outputs["latent_vector"][0], atol=1e-6
    )


def test_distinct_conditions_give_distinct_outputs(batch_outputs):
    decoded = batch_outputs["decoded"][:4].reshape(4, -1)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(decoded[i] - decoded[j]).max() > 1e-3, (i, j)


def test_outputs_do_not_depend_on_the_rest_of_the_batch(
    all_outputs, noisy_params, condition_batch, batch_outputs
):
    images, conditions = condition_batch
    for row in (0, 2, 5):
        single = jax.device_get(
            all_outputs(noisy_params, images[row : row + 1], conditions[row : row + 1])
        )
        for name, value in single.items():
            values, batched = jax.tree.leaves(value), jax.tree.leaves(batch_outputs[name])
            for one, many in zip(values, batched, strict=True):
                np.testing.assert_allclose(
                    one[0], many[row], rtol=1e-5, atol=1e-5, err_msg=f"{name}, row {row}"
                )


def test_decoder_with_zero_output_layer_is_the_identity(all_outputs, params, condition_batch):
    """Zero last conv + residual output: G(E(x), c, x) = tanh(arctanh(0.98 x)) = 0.98 x."""
    images, conditions = condition_batch
    params = {**params, "decoder": zero_output_layer(params["decoder"])}
    decoded = np.asarray(all_outputs(params, images, conditions)["decoded"])
    np.testing.assert_allclose(decoded, _INPUT_SQUASH * np.asarray(images), atol=1e-5)
    assert np.abs(decoded - np.asarray(images)).max() <= 1 - _INPUT_SQUASH + 1e-5


def test_outputs_are_finite_and_in_range(batch_outputs):
    for name, value in batch_outputs.items():
        for leaf in jax.tree.leaves(value):
            assert np.isfinite(leaf).all(), name
    assert np.abs(batch_outputs["decoded"]).max() <= 1.0
    # The CLUB network's log-variance is bounded (tanh * 4) to keep the bound stable.
    assert np.abs(batch_outputs["club_log_var"]).max() <= 4.0


def test_classifier_embedding_has_unit_norm_and_cosine_logits(batch_outputs):
    norms = np.linalg.norm(batch_outputs["embedding"], axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    # Identity logits are 16 * cosine(embedding, class weight): bounded by the scale.
    assert np.abs(batch_outputs["identity_logits"]).max() <= 16.0 + 1e-4
    assert batch_outputs["identity_logits"].shape == (BATCH, NUM_IDENTITIES)


def test_use_skips_length_mismatch_is_a_clear_error():
    for flags in ((True,), (True, True, True)):
        bad = tiny_config.get_config()
        bad.model.use_skips = flags
        with pytest.raises(ValueError, match=r"use_skips needs one flag per level.*got"):
            state_lib.build_networks(bad, NUM_IDENTITIES)


def test_decoder_without_skips_ignores_them():
    """use_skips=False at every level: the skip maps must not reach the output, while the
    latent map must; without residual output a zero output layer gives a grey image."""
    decoder = Decoder(widths=(8, 16, 32), num_res_blocks=1, condition_hidden=16,
                      use_skips=(False, False), residual_output=False)  # fmt: skip
    rng = np.random.default_rng(0)

    def latent(features_seed, skips_seed):
        f = np.random.default_rng(features_seed).normal(size=(2, 8, 8, 32))
        s = np.random.default_rng(skips_seed)
        skips = (s.normal(size=(2, 32, 32, 8)), s.normal(size=(2, 16, 16, 16)))
        vector = np.ones((2, 4))
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), Latent(f, skips, vector))

    condition = jnp.asarray(rng.choice([-0.5, 0.5], (2, 5)), jnp.float32)
    inputs = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    variables = fast_jit(decoder.init)(jax.random.key(0), latent(0, 0), condition, inputs)
    apply = fast_jit(decoder.apply)
    grey = {"params": zero_output_layer(variables["params"])}
    np.testing.assert_array_equal(apply(grey, latent(0, 0), condition, inputs), 0.0)
    variables = perturb(variables, 2)
    base = apply(variables, latent(0, 0), condition, inputs)
    np.testing.assert_allclose(apply(variables, latent(0, 1), condition, inputs), base, atol=1e-6)
    assert np.abs(apply(variables, latent(1, 0), condition, inputs) - base).max() > 1e-3


def test_every_network_has_parameters(params, networks, config):
    assert set(networks) == set(state_lib.NETWORKS) == set(params)
    counts = state_lib.parameter_counts(params)
    for name in state_lib.NETWORKS:
        assert counts[name] > 0, name
        assert counts[name] == sum(np.size(x) for x in jax.tree.leaves(params[name]))
    # The decoder's condition MLP reads the key (raw, or the Fourier map plus the raw
    # attribute choices), the direction flag unless recovery is inverse, and z.
    m = config.model
    key_size = state_lib.condition_size(config) - 1
    if m.key_features:
        key_size = m.key_features + len(m.key_attributes)
    inputs = key_size + (m.recovery == "conditioned") + m.latent_dim
    dense = [v["kernel"].shape for k, v in params["decoder"].items() if k.startswith("Dense")]
    assert any(shape[0] == inputs for shape in dense), dense


def _small_decoder_inputs(seed=0, batch=4, size=32):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, size // 4, size // 4, 32))
    skips = (
        rng.normal(size=(batch, size, size, 8)),
        rng.normal(size=(batch, size // 2, size // 2, 16)),
    )
    latent = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float32), Latent(features, skips, rng.normal(size=(batch, 4)))
    )
    inputs = jnp.asarray(rng.uniform(-0.9, 0.9, (batch, size, size, 3)), jnp.float32)
    key = jnp.asarray(rng.choice([-0.5, 0.5], (batch, 12)), jnp.float32)
    return latent, inputs, key


def _with_direction(direction, key):
    return jnp.concatenate([jnp.full((key.shape[0], 1), direction, jnp.float32), key], -1)


def test_change_space_is_tanh_at_zero_and_linear_inside_the_range():
    u = jnp.linspace(-6.0, 6.0, 4001)
    np.testing.assert_array_equal(from_change_space(u, 0.0), jnp.tanh(u))
    x = jnp.linspace(-0.98, 0.98, 1001)
    np.testing.assert_array_equal(to_change_space(x, 0.0), jnp.arctanh(x))
    pixels = from_change_space(u, 0.8)
    inside = jnp.abs(u) <= 0.8
    np.testing.assert_array_equal(pixels[inside], u[inside])
    assert float(jnp.abs(pixels).max()) <= 1.0  # always a pixel
    assert bool(jnp.all(jnp.diff(pixels) >= -1e-6))  # rising, up to float32 rounding
    assert bool(jnp.all(jnp.diff(pixels[jnp.abs(u) < 1.5]) > 0))  # strictly rising there
    np.testing.assert_allclose(from_change_space(to_change_space(x, 0.8), 0.8), x, atol=1e-6)
    slope = jax.vmap(jax.grad(lambda v: from_change_space(v, 0.8)))(jnp.array([0.79, 0.81]))
    np.testing.assert_allclose(slope, 1.0, atol=0.02)  # no kink where the rim starts
    grads = jax.vmap(jax.grad(lambda v: to_change_space(v, 0.8)))(x)
    assert bool(jnp.all(jnp.isfinite(grads)))
    # Bright pixels cost far less to darken than under tanh: the point of the map.
    cost = lambda a: float(to_change_space(jnp.array(0.98), a) - to_change_space(jnp.array(0.5), a))  # noqa: E731
    assert cost(0.8) < 0.4 * cost(0.0)


@pytest.mark.parametrize("linear_range", [0.0, 0.8])
def test_inverse_recovery_subtracts_the_anonymizing_change(linear_range):
    """recovery='inverse': for one latent and input, the recover output's pre-activation
    change is exactly minus the anonymize output's, so a right key undoes the change
    drawn from the same latent; the direction flag reaches the output only as that sign."""
    decoder = Decoder(widths=(8, 16, 32), num_res_blocks=1, condition_hidden=16,
                      recovery="inverse", key_features=32, linear_range=linear_range)  # fmt: skip
    latent, inputs, key = _small_decoder_inputs()
    variables = fast_jit(decoder.init)(jax.random.key(0), latent, _with_direction(0.5, key), inputs)
    variables = perturb(variables, 3)
    apply = fast_jit(decoder.apply)
    anonymized = apply(variables, latent, _with_direction(keys.ANONYMIZE, key), inputs)
    recovered = apply(variables, latent, _with_direction(keys.RECOVER, key), inputs)
    to_change = lambda x: np.asarray(to_change_space(jnp.asarray(x), linear_range), np.float64)  # noqa: E731
    base = to_change(_INPUT_SQUASH * np.asarray(inputs))
    change_a, change_r = to_change(anonymized) - base, to_change(recovered) - base
    assert np.abs(change_a).mean() > 1e-2  # the decoder does change the image
    # Where an output sits within float32 rounding of +-1 its change cannot be read back.
    readable = (np.abs(anonymized) < 0.9999) & (np.abs(recovered) < 0.9999)
    assert readable.mean() > 0.9
    np.testing.assert_allclose(change_r[readable], -change_a[readable], atol=2e-3)


def test_inverse_recovery_needs_residual_output_and_a_known_mode():
    latent, inputs, key = _small_decoder_inputs()
    condition = _with_direction(0.5, key)
    for bad, message in [
        (dict(recovery="inverse", residual_output=False), "needs residual_output"),
        (dict(recovery="backwards"), "recovery must be"),
    ]:
        decoder = Decoder(widths=(8, 16, 32), num_res_blocks=1, condition_hidden=16, **bad)
        with pytest.raises(ValueError, match=message):
            decoder.init(jax.random.key(0), latent, condition, inputs)


def test_fourier_key_map_is_fixed_and_scrambles_one_bit():
    """key_features: the random map is a parameter that training never moves (zero
    gradient), and one flipped key bit gives features nearly uncorrelated with the
    right key's (a near-miss key is just another key), unlike the raw key vector."""
    decoder = Decoder(widths=(8, 16, 32), num_res_blocks=1, condition_hidden=16,
                      key_features=512, key_frequency=3.0, num_attributes=2)  # fmt: skip
    latent, inputs, key = _small_decoder_inputs()
    condition = _with_direction(0.5, key)
    params = fast_jit(decoder.init)(jax.random.key(0), latent, condition, inputs)["params"]
    assert params["key_projection"].shape == (key.shape[-1], 256)
    # The MLP reads the direction, the 512 features, the 2 raw attribute choices and z.
    assert params["Dense_0"]["kernel"].shape[0] == 1 + 512 + 2 + latent.vector.shape[-1]

    grads = jax.grad(
        lambda p: jnp.sum(decoder.apply({"params": p}, latent, condition, inputs) ** 2)
    )(params)
    np.testing.assert_array_equal(grads["key_projection"], 0.0)
    assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))

    flipped = key.at[:, 3].multiply(-1)
    right = np.asarray(fourier_features(key, params["key_projection"]))
    near = np.asarray(fourier_features(flipped, params["key_projection"]))
    correlation = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(right, near)])
    assert abs(correlation) < 0.3, correlation
    raw_correlation = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(key, flipped)])
    assert raw_correlation > 0.8


def test_warp_zero_flow_is_exact_and_integer_flow_shifts():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    zero = jnp.zeros((2, 8, 8, 2))
    np.testing.assert_array_equal(warp(images, zero), images)
    # Sampling at (y + 1, x - 2): output pixel (y, x) is input pixel (y + 1, x - 2).
    shift = jnp.broadcast_to(jnp.asarray([1.0, -2.0]), (2, 8, 8, 2))
    out = np.asarray(warp(images, shift))
    np.testing.assert_allclose(out[:, :7, 2:], np.asarray(images)[:, 1:, :6], atol=1e-6)
    # Half a pixel: the mean of two neighbours; off the edge: the edge pixel.
    half = jnp.broadcast_to(jnp.asarray([0.0, 0.5]), (2, 8, 8, 2))
    expected = 0.5 * (np.asarray(images)[:, :, :7] + np.asarray(images)[:, :, 1:])
    np.testing.assert_allclose(np.asarray(warp(images, half))[:, :, :7], expected, atol=1e-6)
    far = jnp.broadcast_to(jnp.asarray([0.0, 100.0]), (2, 8, 8, 2))
    np.testing.assert_allclose(warp(images, far), np.repeat(images[:, :, -1:], 8, axis=2))


def test_warp_is_differentiable_in_the_flow():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.uniform(-1, 1, (1, 8, 8, 3)), jnp.float32)
    flow = jnp.asarray(rng.uniform(-1.5, 1.5, (1, 8, 8, 2)), jnp.float32)
    grad = jax.grad(lambda f: jnp.sum(warp(images, f) ** 2))(flow)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_warping_decoder_recovery_warps_back():
    """warp_pixels: anonymize is warp(u, f) + r and recover warp(u - r, -f) for the same
    latent; on a smooth image that recover-after-anonymize comes back close to it."""
    decoder = Decoder(widths=(8, 16, 32), num_res_blocks=1, condition_hidden=16,
                      recovery="inverse", warp_pixels=2.0)  # fmt: skip
    latent, _, key = _small_decoder_inputs()
    yy, xx = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    smooth = np.stack([0.5 * np.sin(2 * yy), 0.5 * np.cos(2 * xx), 0.3 * yy * xx], -1)
    inputs = jnp.asarray(np.broadcast_to(smooth, (4, 32, 32, 3)), jnp.float32)
    variables = fast_jit(decoder.init)(jax.random.key(0), latent, _with_direction(0.5, key), inputs)
    variables = perturb(variables, 4)
    apply = fast_jit(decoder.apply)
    anonymized = apply(variables, latent, _with_direction(keys.ANONYMIZE, key), inputs)
    recovered = apply(variables, latent, _with_direction(keys.RECOVER, key), anonymized)
    assert np.abs(np.asarray(anonymized) - np.asarray(inputs)).mean() > 0.02
    # Not exact (interpolation, edges): well within the change itself.
    error = np.abs(np.asarray(recovered) - np.asarray(inputs))[:, 4:-4, 4:-4].mean()
    assert error < 0.2 * np.abs(np.asarray(anonymized) - np.asarray(inputs)).mean(), error
    conditioned = Decoder(widths=(8, 16, 32), num_res_blocks=1, condition_hidden=16,
                          warp_pixels=2.0)  # fmt: skip
    with pytest.raises(ValueError, match="warp_pixels needs recovery='inverse'"):
        conditioned.init(jax.random.key(0), latent, _with_direction(0.5, key), inputs)


@pytest.mark.parametrize("head,features", [("pooled", 2 * 16), ("flatten", 4 * 4 * 16)])
def test_classifier_embedding_head_reads_pooled_or_every_position(head, features):
    """model.classifier_embedding_head: "pooled" embeds the mean and max of each channel
    over positions; "flatten" embeds every position of the last map, as the attacker
    does. Both stay unit vectors."""
    classifier = Classifier(
        num_identities=5, widths=(8, 16), embedding_dim=6, flatten_embedding=head == "flatten"
    )
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    params = classifier.init(jax.random.key(0), images)["params"]
    embedding_kernels = [v["kernel"] for k, v in params.items()
                         if k.startswith("Dense") and v["kernel"].shape[-1] == 6]  # fmt: skip
    assert [k.shape for k in embedding_kernels] == [(features, 6)]
    out = classifier.apply({"params": params}, images)
    np.testing.assert_allclose(np.linalg.norm(out.embedding, axis=-1), 1.0, atol=1e-5)


def test_classifier_embedding_head_must_be_known():
    bad = tiny_config.get_config()
    bad.model.classifier_embedding_head = "attention"
    with pytest.raises(ValueError, match="classifier_embedding_head must be 'pooled' or 'flatten'"):
        state_lib.build_networks(bad, NUM_IDENTITIES)
