"""The networks: condition sensitivity, batch independence, identity at init, shapes of
contract (unit embeddings), config validation and parameter counts.

Compiles are slow on CPU, so one jitted function computes every network's outputs and
serves all tests: it compiles once for a batch of 8 and once for a batch of 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import fast_jit, tiny_config

from configs import celeba128
from sdn_jax import keys
from sdn_jax import settings as settings_lib
from sdn_jax import state as state_lib
from sdn_jax.models import sdn
from sdn_jax.models.classifier import Classifier
from sdn_jax.models.decoder import Decoder, fourier_features
from sdn_jax.models.encoder import Latent

BATCH = 8
# The decoder pulls its input inside (-1, 1) before arctanh: G = tanh(out + arctanh(0.98 x)).
INPUT_SQUASH = 0.98


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
def all_outputs(networks, settings):
    """Every network's eval output for (images, conditions), one compile per batch size."""

    @fast_jit
    def outputs(params, images, conditions):
        latent = sdn.apply(networks["encoder"], params["encoder"], images)
        decoded = sdn.decode(networks, params, latent, conditions, images)
        c = sdn.apply(networks["classifier"], params["classifier"], images)
        mean, log_var = sdn.apply(
            networks["club"], params["club"], c.embedding, settings.model.embedding_dim
        )
        return dict(
            latent_vector=latent.vector,
            decoded=decoded,
            generated=sdn.generate(networks, params, images, conditions),
            attribute_logits=c.attribute_logits,
            embedding=c.embedding,
            discriminator=sdn.apply(networks["discriminator"], params["discriminator"], images),
            key_logits=sdn.apply(
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


def random_conditions(seed, n, settings):
    rng = jax.random.key(seed)
    password = keys.random_passwords(rng, n, settings.model.password_bits)
    attributes = keys.random_attributes(
        jax.random.fold_in(rng, 1), n, len(settings.model.key_attributes)
    )
    return keys.condition_vector(keys.ANONYMIZE, password, attributes)


@pytest.fixture(scope="module")
def condition_batch(settings):
    """One image in rows 0-3 under: a base condition, the direction flipped, one password
    bit flipped, one attribute flipped; rows 4-7 other images and random conditions."""
    size = settings.data.image_size
    images = np.array(random_images(0, BATCH, size))
    images[1:4] = images[0]
    conditions = np.array(random_conditions(0, BATCH, settings))
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


def test_generate_is_the_decoder_on_the_encoders_latent(batch_outputs):
    """sdn.generate(x, c) = G(E(x), c, x): what inference and the evaluation run."""
    np.testing.assert_allclose(batch_outputs["generated"], batch_outputs["decoded"], atol=1e-6)


def test_decoder_with_zero_output_layer_is_the_identity(all_outputs, params, condition_batch):
    """Zero last conv + residual output: G(E(x), c, x) = tanh(arctanh(0.98 x)) = 0.98 x."""
    images, conditions = condition_batch
    params = {**params, "decoder": zero_output_layer(params["decoder"])}
    decoded = np.asarray(all_outputs(params, images, conditions)["decoded"])
    np.testing.assert_allclose(decoded, INPUT_SQUASH * np.asarray(images), atol=1e-5)
    assert np.abs(decoded - np.asarray(images)).max() <= 1 - INPUT_SQUASH + 1e-5


def test_outputs_are_finite_and_in_range(batch_outputs):
    for name, value in batch_outputs.items():
        for leaf in jax.tree.leaves(value):
            assert np.isfinite(leaf).all(), name
    assert np.abs(batch_outputs["decoded"]).max() <= 1.0
    # The CLUB network's log-variance is bounded (tanh * 4) to keep the bound stable.
    assert np.abs(batch_outputs["club_log_var"]).max() <= 4.0


def test_classifier_embedding_has_unit_norm_and_40_attribute_logits(batch_outputs, settings):
    norms = np.linalg.norm(batch_outputs["embedding"], axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert batch_outputs["embedding"].shape == (BATCH, settings.model.embedding_dim)
    assert batch_outputs["attribute_logits"].shape == (BATCH, 40)


def test_use_skips_length_mismatch_is_a_clear_error():
    for flags in ((True,), (True, True, True)):
        with pytest.raises(
            settings_lib.SettingsError,
            match=r"model.use_skips must be one flag per level above the deepest.*got",
        ):
            settings_lib.from_config(tiny_config(**{"model.use_skips": flags}))


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


def test_every_network_has_parameters(params, networks, settings):
    assert set(networks) == set(sdn.NETWORKS) == set(state_lib.NETWORKS) == set(params)
    counts = state_lib.parameter_counts(params)
    for name in sdn.NETWORKS:
        assert counts[name] > 0, name
    # q with club_hidden 16 on 16-d embeddings: three 16 -> 16 Dense layers (hidden,
    # mean, log-variance), 16 * 16 + 16 parameters each.
    assert (settings.model.club_hidden, settings.model.embedding_dim) == (16, 16)
    assert counts["club"] == 3 * (16 * 16 + 16)
    # The tiny condition: the direction flag, 16 password bits and 2 key attributes.
    assert sdn.condition_size(settings.model) == 1 + 16 + 2
    # The decoder's condition MLP reads the key through the 256 Fourier features plus the
    # 2 raw attribute choices, and z (32); with inverse recovery not the direction flag.
    dense = [v["kernel"].shape for k, v in params["decoder"].items() if k.startswith("Dense")]
    assert (256 + 2 + 32, settings.model.condition_hidden) in dense, dense


def test_parameter_counts_counts_every_leaf():
    tree = {
        "a": {"w": np.zeros((2, 3)), "b": np.zeros(3), "inner": {"k": np.zeros((4, 1, 2))}},
        "empty": {},
    }
    assert state_lib.parameter_counts(tree) == {"a": 6 + 3 + 8, "empty": 0}


def test_celeba128_config_builds_networks_with_parameters():
    """configs/celeba128.py is valid and its networks initialise (shapes only: no compute
    at 128 px)."""
    settings = settings_lib.from_config(celeba128.get_config())
    assert settings.data.name == "celeba" and settings.data.image_size == 128
    networks = sdn.build_networks(settings.model)
    shapes = jax.eval_shape(
        lambda: sdn.init_params(jax.random.key(0), networks, settings.model, 128)
    )
    counts = state_lib.parameter_counts(shapes)
    assert set(counts) == set(sdn.NETWORKS)
    for name, count in counts.items():
        assert count > 0, name
    # Five levels from 128 px: the encoder ends at 8 px with the widest maps.
    latent = jax.eval_shape(
        lambda p: sdn.apply(networks["encoder"], p, jnp.zeros((1, 128, 128, 3))), shapes["encoder"]
    )
    assert latent.features.shape == (1, 8, 8, 256)
    assert latent.vector.shape == (1, 256)


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


def test_inverse_recovery_subtracts_the_anonymizing_change():
    """recovery='inverse': for one latent and input, the recover output's pre-activation
    change is exactly minus the anonymize output's, so a right key undoes the change
    drawn from the same latent; the direction flag reaches the output only as that sign."""
    decoder = Decoder(widths=(8, 16, 32), num_res_blocks=1, condition_hidden=16,
                      recovery="inverse", key_features=32)  # fmt: skip
    latent, inputs, key = _small_decoder_inputs()
    variables = fast_jit(decoder.init)(jax.random.key(0), latent, _with_direction(0.5, key), inputs)
    variables = perturb(variables, 3)
    apply = fast_jit(decoder.apply)
    anonymized = apply(variables, latent, _with_direction(keys.ANONYMIZE, key), inputs)
    recovered = apply(variables, latent, _with_direction(keys.RECOVER, key), inputs)
    to_change = lambda x: np.arctanh(np.asarray(x, np.float64))  # noqa: E731
    base = to_change(INPUT_SQUASH * np.asarray(inputs))
    change_a, change_r = to_change(anonymized) - base, to_change(recovered) - base
    assert np.abs(change_a).mean() > 1e-2  # the decoder does change the image
    # Where an output sits within float32 rounding of +-1 its change cannot be read back.
    readable = (np.abs(anonymized) < 0.9999) & (np.abs(recovered) < 0.9999)
    assert readable.mean() > 0.9
    np.testing.assert_allclose(change_r[readable], -change_a[readable], atol=2e-3)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model.recovery": "inverse", "model.residual_output": False},
         r"model.recovery='inverse' subtracts a change: it needs model.residual_output=True"),
        ({"model.recovery": "backwards"},
         r"model.recovery must be 'inverse' or 'conditioned', got 'backwards'"),
    ],
)  # fmt: skip
def test_inverse_recovery_needs_residual_output_and_a_known_mode(changes, message):
    with pytest.raises(settings_lib.SettingsError, match=message):
        settings_lib.from_config(tiny_config(**changes))


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

    grads = fast_jit(
        jax.grad(lambda p: jnp.sum(decoder.apply({"params": p}, latent, condition, inputs) ** 2))
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


def test_fourier_features_on_a_hand_made_key():
    """[sin(k W), cos(k W)] for one key and a 2 x 2 projection, worked out by hand."""
    key = jnp.asarray([[0.5, -0.5]])
    projection = jnp.asarray([[np.pi, 0.0], [np.pi, np.pi]])  # phases: 0 and -pi/2
    np.testing.assert_allclose(
        fourier_features(key, projection), [[0.0, -1.0, 1.0, 0.0]], atol=1e-6
    )


@pytest.mark.parametrize("head,features", [("pooled", 2 * 16), ("flatten", 4 * 4 * 16)])
def test_classifier_embedding_head_reads_pooled_or_every_position(head, features):
    """model.classifier_embedding_head: "pooled" embeds the mean and max of each channel
    over positions; "flatten" embeds every position of the last map, as the attacker
    does. Both stay unit vectors."""
    classifier = Classifier(widths=(8, 16), embedding_dim=6, flatten_embedding=head == "flatten")
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    params = fast_jit(classifier.init)(jax.random.key(0), images)["params"]
    embedding_kernels = [v["kernel"] for k, v in params.items()
                         if k.startswith("Dense") and v["kernel"].shape[-1] == 6]  # fmt: skip
    assert [k.shape for k in embedding_kernels] == [(features, 6)]
    out = fast_jit(classifier.apply)({"params": params}, images)
    np.testing.assert_allclose(np.linalg.norm(out.embedding, axis=-1), 1.0, atol=1e-5)
    assert out.attribute_logits.shape == (2, 40)


def test_classifier_embedding_head_must_be_known():
    with pytest.raises(
        settings_lib.SettingsError,
        match="model.classifier_embedding_head must be 'flatten' or 'pooled', got 'attention'",
    ):
        settings_lib.from_config(tiny_config(**{"model.classifier_embedding_head": "attention"}))
