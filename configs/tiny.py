"""A run that takes seconds: for tests and for trying the code paths."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.image_size = 32
    config.data.num_train_identities = 12
    config.data.photos_per_identity = 6
    config.data.validation_photos_per_identity = 2
    config.data.num_test_identities = 4
    config.data.random_flip = True
    config.train.global_batch_size = 8
    return config
