"""Paper scale: CelebA at 128x128, the official train split, ~30 epochs (METHOD.md).

    python -m sdn_jax.data.prepare --dataset celeba --manual_dir ~/celeba \
        --data_dir "$TFDS_DATA_DIR" --image_size 128
    python -m sdn_jax.main --config configs/celeba128.py --workdir runs/celeba128 \
        --config.data.manual_dir ~/celeba

Sized for accelerators (a GPU or a TPU slice), not for a laptop CPU.
"""

from configs import default


def get_config():
    config = default.get_config()
    data = config.data
    data.name = "celeba"
    data.image_size = 128
    data.worker_count = 4  # JPEG-sized PNG decoding at 128px wants worker processes.

    model = config.model
    model.password_bits = 64
    model.key_attributes = ("Smiling", "Mouth_Slightly_Open", "Mustache", "Eyeglasses", "Male")
    model.widths = (32, 64, 128, 256, 256)  # 128 -> 8 px, five levels
    model.encoder_res_blocks = 4
    model.decoder_res_blocks = 4
    model.latent_dim = 256
    model.condition_hidden = 256
    model.use_skips = (False, True, True, True)  # no full-resolution skip: identity lives there
    model.discriminator_widths = (64, 128, 256, 512)
    model.classifier_widths = (64, 128, 256, 512)
    model.embedding_dim = 128
    model.key_predictor_widths = (64, 128, 256)
    model.club_hidden = 256

    optim = config.optim
    optim.learning_rate = 1e-4  # Adam 1e-4, betas (0.5, 0.999) as in Gu et al.
    optim.b1, optim.b2 = 0.5, 0.999
    optim.warmup_steps = 1000

    train = config.train
    train.global_batch_size = 32
    train.generator_batch_size = None  # G, D and C all on the 32
    train.classifier_warmup_steps = 800
    train.num_steps = 150_000  # ~30 epochs of the 162,770 training images
    train.log_every_steps = 100
    train.checkpoint_every_steps = 5000
    train.sample_every_steps = 2500
    train.num_samples = 8

    config.eval.num_images = 2000
    config.eval.batch_size = 64
    # Made for an accelerator, where large Inception batches pay (the default's 8 suits CPUs).
    config.eval.realism.inception_batch_size = 64
    # The attacker learns from 40,000 of the 162,770 train photos (whole people), its
    # attributes at 64 px: ~0.5 GB of host memory instead of the 8 GB of the split at 128 px.
    attacker = config.eval.attacker
    attacker.max_train_images = 40_000
    attacker.attribute_input_size = 64
    return config
