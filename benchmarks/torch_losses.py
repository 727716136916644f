"""What sdn-jax's losses are made of, in PyTorch, for the reference step
(torch_reference.py): the key samplers of keys.py, augment.recolour and the terms of
losses.py. Images are NCHW in [-1, 1].

The samplers draw from torch's RNG (other numbers than JAX's, the same shapes and
shares); `recolour` takes its random numbers as an argument when a test must compare.
"""

import math

import torch
import torch.nn.functional as F

from sdn_jax.settings import Settings

ANONYMIZE, RECOVER = 0.5, -0.5  # keys.py's direction flags


# ------------------------------------------------------------------ keys and recolouring


def signs(shape) -> torch.Tensor:
    """Uniform {-0.5, +0.5}."""
    return torch.randint(0, 2, shape).float() - 0.5


def flip(vectors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Negates distances[i] distinct random positions of row i."""
    ranks = torch.rand(vectors.shape).argsort(dim=-1).argsort(dim=-1)
    return torch.where(ranks < distances[:, None], -vectors, vectors)


def wrong_keys(password, attributes, attribute_only=0.25, few_bits=0.25):
    """keys.wrong_keys' three kinds in the same shares (systematic sampling, shuffled):
    other attributes with the right password, 1-4 flipped password bits, a random key."""
    (batch, bits), num_attributes = password.shape, attributes.shape[-1]
    u = (torch.arange(batch) + torch.rand(())) / batch
    edges = torch.tensor([attribute_only, attribute_only + few_bits])
    kinds = (u[:, None] >= edges).sum(dim=-1)[torch.randperm(batch)][:, None]
    few_pw = flip(password, torch.randint(1, min(4, bits) + 1, (batch,)))
    other_attr = flip(attributes, torch.randint(1, max(num_attributes, 1) + 1, (batch,)))
    random_pw = signs(password.shape)
    same = (random_pw == password).all(dim=-1, keepdim=True)  # never the right password
    random_pw = torch.where(same, flip(password, torch.ones(batch)), random_pw)
    wrong_pw = torch.where(kinds == 0, password, torch.where(kinds == 1, few_pw, random_pw))
    random_attr = signs(attributes.shape)
    wrong_attr = torch.where(
        kinds == 0, other_attr, torch.where(kinds == 1, attributes, random_attr)
    )
    return wrong_pw, wrong_attr


def sample_keys(batch: int, settings: Settings) -> dict:
    """objectives.sample_keys: right keys (p, a_t), a second password, wrong keys."""
    bits, num_attributes = settings.model.password_bits, len(settings.model.key_attributes)
    password, target = signs((batch, bits)), signs((batch, num_attributes))
    wrong_password, wrong_attributes = wrong_keys(password, target)
    return dict(
        password=password,
        password2=signs((batch, bits)),
        attributes=target,
        wrong_password=wrong_password,
        wrong_attributes=wrong_attributes,
    )


def condition_vector(direction: float, password, attributes) -> torch.Tensor:
    """[direction, password, attributes] per row, as keys.condition_vector."""
    flag = torch.full((password.shape[0], 1), direction)
    return torch.cat([flag, password, attributes], dim=-1)


def recolour_draws(batch: int, probability: float) -> dict:
    """The random numbers of augment.recolour, in NCHW shapes."""
    column = (batch, 1, 1, 1)
    return dict(
        theta=torch.rand(batch) * 2 * math.pi,
        gain=torch.rand(batch, 3, 1, 1) - 0.5,
        brightness=torch.rand(column) * 0.95 - 0.7,
        grey=torch.rand(column) < 0.2,
        region=torch.rand(batch, 1, 3, 3),
        everywhere=torch.rand(column) < 0.5,
        chosen=(torch.rand(column) < probability).float(),
    )


def _hue_rotation(theta: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos()[:, None, None], theta.sin()[:, None, None]
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
    return c * torch.eye(3) + (1 - c) * torch.full((3, 3), 1 / 3) + s * cross


def recolour(images, probability: float, draws: dict | None = None) -> torch.Tensor:
    """augment.recolour on NCHW images: hue, gain, brightness, sometimes grey, over the
    whole image or a smooth region, for `probability` of the images."""
    b, _, h, w = images.shape
    d = recolour_draws(b, probability) if draws is None else draws
    x = (images + 1) / 2
    y = torch.einsum("bchw,bdc->bdhw", x, _hue_rotation(d["theta"]))
    y = y * d["gain"].exp() * d["brightness"].exp()
    y = torch.where(d["grey"], y.mean(dim=1, keepdim=True), y).clamp(0, 1)
    # Bilinear upsampling with half-pixel centres, edges clamped: jax.image.resize "linear".
    region = F.interpolate(d["region"], size=(h, w), mode="bilinear", align_corners=False)
    weight = torch.where(d["everywhere"], 1.0, region) * d["chosen"]
    return (x + weight * (y - x)) * 2 - 1


# --------------------------------------------------------------------------- loss terms


def lsgan_generator(scores):
    return torch.stack([((s - 1) ** 2).mean() for s in scores]).mean()


def lsgan_discriminator(real, fake):
    return torch.stack([((r - 1) ** 2).mean() + (f**2).mean() for r, f in zip(real, fake)]).mean()


def _per_image_l1(a, b):
    return (a - b).abs().flatten(1).mean(dim=1)


def distance_margin(a, b, margin: float):
    return F.relu(margin - _per_image_l1(a, b)).mean()


def closeness_margin(a, b, margin: float):
    return F.relu(_per_image_l1(a, b) - margin).mean()


def attribute_bce(logits, targets):
    return F.binary_cross_entropy_with_logits(logits, targets)


def _row_cosines(a, b):
    unit = lambda x: x / (x.norm(dim=-1, keepdim=True) + 1e-6)
    return (unit(a) * unit(b)).sum(dim=-1)


def dissimilarity(a, b):
    return (0.5 * (1 + _row_cosines(a, b))).mean()


def mismatch(a, b):
    return 0.5 * (1 - _row_cosines(a, b).mean())


def supervised_contrastive(embeddings, labels, temperature: float):
    n = embeddings.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool)
    logits = (embeddings @ embeddings.T / temperature).masked_fill(self_mask, -math.inf)
    log_prob = logits.log_softmax(dim=-1)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positive.sum(dim=-1)
    per_row = -torch.where(positive, log_prob, 0.0).sum(dim=-1) / count.clamp(min=1)
    has_positive = count > 0
    return torch.where(has_positive, per_row, 0.0).sum() / has_positive.sum().clamp(min=1)


def gaussian_log_likelihood(mean, log_var, y):
    return (-0.5 * ((y - mean) ** 2 * (-log_var).exp() + log_var)).sum(dim=-1)


def club_upper_bound(mean, log_var, y):
    positive = gaussian_log_likelihood(mean, log_var, y)
    diff = (y[None, :, :] - mean[:, None, :]) ** 2 * (-log_var).exp()[:, None, :]
    negative = (-0.5 * (diff + log_var[:, None, :])).sum(dim=-1).mean(dim=1)
    return (positive - negative).mean()


def key_information(logits, password):
    return F.binary_cross_entropy_with_logits(logits, password + 0.5)
