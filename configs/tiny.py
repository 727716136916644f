"""A run that takes seconds: for tests and for trying the code paths."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.image_size = 32
    config.data.num_train_identities = 12
    config.data.photos_per_identity = 6
    config.data.validation_photos_per_identity = 2
    config.data.num_test_identities = 4
    config.model.password_bits = 16
    config.model.key_attributes = ("Smiling", "Eyeglasses")
    config.model.widths = (8, 16, 32)
    config.model.encoder_res_blocks = 1
    config.model.decoder_res_blocks = 1
    config.model.latent_dim = 32
    config.model.condition_hidden = 32
    config.model.use_skips = (True, True)
    config.model.discriminator_widths = (8, 16)
    config.model.classifier_widths = (8, 16, 16)
    config.model.embedding_dim = 16
    config.model.key_predictor_widths = (8, 16)
    config.model.club_hidden = 16
    config.loss.ramp_steps = 2
    config.optim.warmup_steps = 2
    config.train.num_steps = 6
    # No C warm-up: the loop tests count full steps (steps.classifier_warmup_step has its
    # own test in test_steps.py).
    config.train.classifier_warmup_steps = 0
    config.train.global_batch_size = 8
    config.train.generator_batch_size = None  # all 8 (test_steps checks the share)
    # Moving averages of E and G on, so every test of the loop and of loading reads them.
    config.train.ema_decay = 0.5
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 3
    config.train.sample_every_steps = 3
    config.train.num_samples = 4
    config.eval.num_images = 16
    config.eval.full_report = False  # the attacker would dominate a test's time
    config.eval.batch_size = 8
    # The realism judge in seconds (the report's tests fake the Inception features).
    config.eval.realism.kid_subsets = 10
    config.eval.realism.inception_batch_size = 8
    config.eval.realism.cnn_steps = 10
    config.eval.realism.cnn_batch_size = 8
    config.eval.realism.logistic_steps = 10
    return config
