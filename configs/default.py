"""The default run: synthetic faces at 64x64 on a laptop CPU, in minutes.

        python -m sdn_jax.main --config configs/default.py --workdir runs/default

Every field can be overridden on the command line, e.g. `--config.data.image_size=32`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # Everything random in a run (init, shuffling, keys) derives from it.

    config.data = data = ml_collections.ConfigDict()
    data.name = "synth_faces"  # "synth_faces" (built in) or "celeba" (needs manual_dir).
    data.image_size = 64  # Pixels per side; synth_faces: 32, 64 or 128; celeba: 64 or 128.
    # Where TFDS keeps prepared data. None: $TFDS_DATA_DIR, else <workdir>/../tensorflow_datasets.
    data.data_dir = ml_collections.config_dict.placeholder(str)
    # CelebA only: the folder holding the official release files (see README).
    data.manual_dir = ml_collections.config_dict.placeholder(str)
    # synth_faces only: the size of the synthetic world. The dataset seed fixes who the
    # people are; it is separate from `seed` so runs with other seeds see the same people.
    data.dataset_seed = 0
    data.num_train_identities = 1000  # People in train (and validation: other photos of them).
    data.photos_per_identity = 24  # Train photos per train person; also photos per test person.
    data.validation_photos_per_identity = 4  # Held-out photos of each train person.
    data.num_test_identities = 200  # People never seen in training.
    data.random_flip = True  # Horizontal flips of training images.
    data.worker_count = 0  # grain worker processes (0: decode in the main process).

    config.train = train = ml_collections.ConfigDict()
    train.global_batch_size = 16  # Split evenly over all JAX processes.
    return config
