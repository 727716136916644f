"""benchmarks/torch_reference.py against sdn-jax: the same parameter counts, the same
outputs and loss terms on the same weights, and a torch step that trains every network.

Skipped without torch (CI has none; requirements-bench.txt installs it). On the default
config (the one the comparison times) at a batch of 4.
"""

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import fast_jit, tiny_settings

from configs import default
from sdn_jax import augment, objectives
from sdn_jax import settings as settings_lib
from sdn_jax import state as state_lib
from sdn_jax.models import sdn

torch = pytest.importorskip(
    "torch", reason="the PyTorch reference needs torch (pip install -r requirements-bench.txt)"
)

from benchmarks import torch_losses, torch_networks, torch_reference  # noqa: E402

BATCH = 4
# Float32 sums in another order (XLA's convolutions and reductions against oneDNN's)
# through up to ~20 layers: ~1e-6 typical; 1e-4 leaves room and still catches a
# misplaced or transposed weight, a padding or a flattening order (those move outputs
# by 1e-2 or more). GroupNorm's epsilon is checked apart: on unit-variance maps 1e-5
# against 1e-6 moves outputs by ~1e-5 only.
ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch's OpenMP threads slow to a crawl on cores that another process keeps busy
    (a batch-4 step: 10 s instead of 0.07 s); these tests time nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def default_settings():
    """The default config with a batch of BATCH images, G on every other one."""
    config = default.get_config()
    config.train.global_batch_size = BATCH
    config.train.generator_batch_size = BATCH // 2
    return settings_lib.from_config(config)


def _shapes(settings):
    networks = sdn.build_networks(settings.model)
    init = lambda: sdn.init_params(  # noqa: E731
        jax.random.key(0), networks, settings.model, settings.data.image_size
    )
    return networks, jax.eval_shape(init)


def _random_params(shapes, seed: int = 0) -> dict:
    """Weights for comparing outputs. Random biases and norm scales too: the init's zeros
    and ones would not show one copied to the wrong place."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            value = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
        elif name == "scale":
            value = 1 + 0.1 * rng.normal(size=shape)
        elif name == "bias":
            value = 0.1 * rng.normal(size=shape)
        else:  # the decoder's key_projection: N(0, key_frequency^2)
            value = 3.0 * rng.normal(size=shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def copied(default_settings):
    """(JAX networks, params, torch networks holding the same params)."""
    networks, shapes = _shapes(default_settings)
    params = _random_params(shapes)
    nets = torch_networks.build_networks(default_settings.model, default_settings.data.image_size)
    torch_networks.copy_flax_params(nets, params)
    return networks, params, nets


def _nchw(x) -> "torch.Tensor":
    return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _close(torch_value, jax_value, atol=ATOL):
    value = torch_value.detach().numpy()
    if value.ndim == 4:
        value = value.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(value, np.asarray(jax_value), atol=atol, rtol=0)


def test_group_norms_use_flax_epsilon(default_settings):
    nets = torch_networks.build_networks(default_settings.model, default_settings.data.image_size)
    norms = [m for m in nets.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.eps for m in norms} == {flax.linen.GroupNorm(num_groups=1).epsilon}


@pytest.mark.parametrize("config", ["default", "tiny"])
def test_parameter_counts_match(config, default_settings):
    settings = default_settings if config == "default" else tiny_settings()
    _, shapes = _shapes(settings)
    nets = torch_networks.build_networks(settings.model, settings.data.image_size)
    assert torch_networks.parameter_counts(nets) == state_lib.parameter_counts(shapes)


def _inputs(settings):
    rng = np.random.default_rng(1)
    size = settings.data.image_size
    images = rng.uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32)
    others = rng.uniform(-1, 1, images.shape).astype(np.float32)
    key_size = settings.model.password_bits + len(settings.model.key_attributes)
    key = np.where(rng.random((BATCH, key_size)) < 0.5, 0.5, -0.5)
    direction = np.array([[0.5], [-0.5]] * (BATCH // 2))  # both of G's branches
    condition = np.concatenate([direction, key], axis=-1).astype(np.float32)
    embedding = rng.normal(size=(BATCH, settings.model.embedding_dim)).astype(np.float32)
    return images, others, condition, embedding


def test_networks_match_on_copied_weights(default_settings, copied):
    networks, params, nets = copied
    images, others, condition, embedding = _inputs(default_settings)

    @fast_jit
    def outputs(params):
        run = lambda name, *args: sdn.apply(networks[name], params[name], *args)  # noqa: E731
        latent = run("encoder", images)
        return dict(
            latent=latent,
            decoded=run("decoder", latent, condition, others),
            scores=run("discriminator", images),
            classifier=run("classifier", images),
            key_logits=run("key_predictor", images, others),
            club=run("club", embedding, embedding.shape[-1]),
        )

    expected = outputs(params)
    with torch.no_grad():
        latent = nets["encoder"](_nchw(images))
        _close(latent.features, expected["latent"].features)
        for skip, expected_skip in zip(latent.skips, expected["latent"].skips, strict=True):
            _close(skip, expected_skip)
        _close(latent.vector, expected["latent"].vector)
        # G on JAX's latent: its own error, not E's carried over.
        jax_latent = torch_networks.Latent(
            _nchw(expected["latent"].features),
            tuple(_nchw(s) for s in expected["latent"].skips),
            torch.from_numpy(np.array(expected["latent"].vector)),
        )
        decoded = nets["decoder"](jax_latent, torch.from_numpy(condition), _nchw(others))
        _close(decoded, expected["decoded"])
        scores = nets["discriminator"](_nchw(images))
        assert len(scores) == len(expected["scores"]) == 2
        for score, expected_score in zip(scores, expected["scores"]):
            _close(score, expected_score)
        c = nets["classifier"](_nchw(images))
        _close(c.embedding, expected["classifier"].embedding)
        _close(c.attribute_logits, expected["classifier"].attribute_logits)
        _close(nets["key_predictor"](_nchw(images), _nchw(others)), expected["key_logits"])
        mean, log_var = nets["club"](torch.from_numpy(embedding))
        _close(mean, expected["club"][0])
        _close(log_var, expected["club"][1])


def test_generator_terms_match(default_settings, copied):
    """The generator's terms on the same weights, batch and keys. Recolouring is off on
    both sides (JAX: no rng); test_recolour_matches_augment checks it apart."""
    networks, params, nets = copied
    settings = default_settings
    images = _inputs(settings)[0][: BATCH // 2]
    key = objectives.sample_keys(jax.random.key(3), images.shape[0], settings)

    @fast_jit
    def terms(params):
        return objectives.generator_terms(params, networks, {"image": images}, key, settings)

    expected, expected_out, _ = terms(params)
    torch_key = {name: torch.from_numpy(np.array(value)) for name, value in key.items()}
    with torch.no_grad():
        got, out, _, _ = torch_reference.generator_terms(
            nets, _nchw(images), torch_key, settings, recolour_critic=False
        )
    for image, expected_image in zip(out, expected_out, strict=True):
        _close(image, expected_image)
    assert got.keys() == expected.keys()
    for name, value in got.items():
        # Relative 1e-4 (scalars of up to ~50: the CLUB term), absolute 1e-5 for the
        # hinges, which are 0 or small here.
        np.testing.assert_allclose(
            value.item(), float(expected[name]), rtol=1e-4, atol=1e-5, err_msg=name
        )


def test_critics_loss_matches(default_settings, copied):
    """D's and C's update loss on the same weights, batch and fakes. Recolouring is off
    on both sides (JAX: no rng)."""
    networks, params, nets = copied
    settings = default_settings
    batch = _batch(settings)
    every = torch_reference.generator_every(settings)
    rng = np.random.default_rng(2)
    fakes = rng.uniform(-1, 1, (3 * len(batch["image"]) // every, *batch["image"].shape[1:]))
    fakes = fakes.astype(np.float32)
    dc_params = {name: params[name] for name in ("discriminator", "classifier")}

    @fast_jit
    def loss(dc_params, batch, fakes):
        return objectives.discriminator_classifier_loss(dc_params, networks, batch, fakes, settings)

    expected, _ = loss(dc_params, batch, fakes)
    with torch.no_grad():
        got = torch_reference.critics_loss(
            nets, torch_reference.torch_batch(batch), _nchw(fakes), settings, recolour_copy=False
        )
    np.testing.assert_allclose(got.item(), float(expected), rtol=1e-4)


def test_recolour_matches_augment():
    """torch_losses.recolour on augment.recolour's own random numbers."""
    rng = jax.random.key(7)
    images = jax.random.uniform(jax.random.key(8), (6, 16, 16, 3), minval=-1, maxval=1)
    b, probability = images.shape[0], 0.5
    k = jax.random.split(rng, 7)
    column = (b, 1, 1, 1)
    draws = dict(
        theta=jax.random.uniform(k[0], (b,)) * 2 * jnp.pi,
        gain=jax.random.uniform(k[1], (b, 1, 1, 3), minval=-0.5, maxval=0.5),
        brightness=jax.random.uniform(k[2], column, minval=-0.7, maxval=0.25),
        grey=jax.random.bernoulli(k[3], 0.2, column),
        region=jax.random.uniform(k[4], (b, 3, 3, 1)),
        everywhere=jax.random.bernoulli(k[5], 0.5, column),
        chosen=jax.random.bernoulli(k[6], probability, column).astype(jnp.float32),
    )
    torch_draws = {
        name: _nchw(value) if value.ndim == 4 else torch.from_numpy(np.array(value))
        for name, value in draws.items()
    }
    got = torch_losses.recolour(_nchw(images), probability, torch_draws)
    _close(got, augment.recolour(rng, images, probability), atol=1e-5)


def test_recolour_draws_follow_augment():
    """The draws' ranges and rates as augment.recolour's (the test above fixes them)."""
    torch.manual_seed(0)
    d = torch_losses.recolour_draws(20_000, 0.5)
    ranges = dict(theta=(0, 2 * np.pi), gain=(-0.5, 0.5), brightness=(-0.7, 0.25), region=(0, 1))
    for name, (low, high) in ranges.items():
        assert low <= d[name].min() and d[name].max() < high, name
        assert d[name].mean().item() == pytest.approx((low + high) / 2, abs=0.02 * (high - low))
    rates = dict(grey=0.2, everywhere=0.5, chosen=0.5)
    for name, rate in rates.items():
        assert d[name].float().mean().item() == pytest.approx(rate, abs=0.015), name


def test_wrong_keys_are_never_the_right_key():
    torch.manual_seed(0)
    password = torch_losses.signs((64, 8))
    attributes = torch_losses.signs((64, 2))
    wrong_pw, wrong_attr = torch_losses.wrong_keys(password, attributes)
    same = (wrong_pw == password).all(-1) & (wrong_attr == attributes).all(-1)
    assert not same.any()
    assert set(np.unique(wrong_pw.numpy())) <= {-0.5, 0.5}


def test_learning_rate_is_the_schedule_of_state(default_settings):
    schedule = state_lib.learning_rate_schedule(default_settings)
    rates = torch_reference.learning_rates(default_settings)
    for step in (0, 1, 25, 50, 51, 3000, 6000, 7000):
        # Past num_steps the trainer keeps the last rate, as the schedule does.
        assert rates[min(step, len(rates) - 1)] == pytest.approx(
            float(schedule(step)), rel=1e-5, abs=1e-12
        )


def test_a_step_trains_every_network(default_settings):
    torch.manual_seed(0)
    trainer = torch_reference.Trainer(default_settings)
    trainer.step_count = default_settings.optim.warmup_steps  # lr 0 at step 0
    before = {
        name: [p.detach().clone() for p in net.parameters()] for name, net in trainer.nets.items()
    }
    batch = trainer.batch(_batch(default_settings))
    losses = trainer.step(batch)
    assert all(torch.isfinite(value) for value in losses.values())
    for name, net in trainer.nets.items():
        for old, new in zip(before[name], net.parameters(), strict=True):
            if new.requires_grad:
                assert not torch.equal(old, new), name
            else:  # the decoder's fixed key map
                assert torch.equal(old, new), name
    assert trainer.step_count == default_settings.optim.warmup_steps + 1


def test_channels_last_computes_the_same_step(default_settings):
    """The eager benchmark runs channels_last: the same losses as NCHW."""
    losses = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        trainer = torch_reference.Trainer(default_settings, channels_last=channels_last)
        losses.append(trainer.step(trainer.batch(_batch(default_settings))))
    for name, value in losses[0].items():
        assert losses[1][name].item() == pytest.approx(value.item(), rel=1e-5), name


def _batch(settings):
    from sdn_jax import training_setup

    return training_setup.random_batch(settings)


def test_timing_reports_a_failed_compile(default_settings, monkeypatch):
    def no_compiler(fn):
        def fails(*args):
            raise RuntimeError("no C++ compiler\nsecond line")

        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    timed = lambda step: (step(), (1, 0.5))[1]  # noqa: E731
    messages = []
    results = torch_reference.time_train_step(
        default_settings, _batch(default_settings), timed, messages.append, threads=1
    )
    assert results["eager"]["steps_per_s"] == 2.0 and results["eager"]["num_steps"] == 1
    assert results["compile"] == {
        "steps_per_s": None,
        "error": "RuntimeError: no C++ compiler",
    }
    assert results["version"] == torch.__version__
    assert any("torch.compile failed" in m for m in messages)
