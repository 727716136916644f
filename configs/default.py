"""The default run: synthetic faces at 32x32 on a laptop CPU, in minutes.

32 px, not 64: a full step is ~4.6x cheaper, and the 64 px model of the same wall time
(1,000 full steps) met neither the attribute nor the password figures
(docs/experiments.md, "The key pathway").

    python -m sdn_jax.main --config configs/default.py --workdir runs/default

Every field can be overridden on the command line, e.g. `--config.train.num_steps=200`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # Everything random in a run (init, shuffling, keys) derives from it.

    config.data = data = ml_collections.ConfigDict()
    data.name = "synth_faces"  # "synth_faces" (built in) or "celeba" (needs manual_dir).
    data.image_size = 32  # Pixels per side; synth_faces: 32, 64 or 128; celeba: 64 or 128.
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
    # Each batch holds runs of this many photos of one person (1: a plain shuffle), so
    # C's contrastive loss has positives: 16 = 4 people x 4 photos.
    data.photos_per_person_in_batch = 4
    data.worker_count = 0  # grain worker processes (0: decode in the main process).
    # A train split whose decoded images take at most this many MiB is decoded once and
    # served from memory (pipeline.InMemorySource; 0: decode every read). The default's
    # 24,000 images take 74 MiB and feed 64-image batches ~7x faster; CelebA at 128 px
    # (162,770 images: 7.5 GiB) is read from disk.
    data.in_memory_mb = 1024.0

    config.model = model = ml_collections.ConfigDict()
    model.password_bits = 64  # K: key bits from the passphrase's KDF (METHOD.md section 2).
    # The user-chosen attributes that are part of the key and that anonymized faces show.
    model.key_attributes = ("Smiling", "Mouth_Slightly_Open", "Mustache", "Eyeglasses")
    # Encoder E / decoder G: channels per resolution, finest (full size) first.
    model.widths = (8, 24, 48, 96)
    model.encoder_res_blocks = 1  # at the deepest (H/8) level
    model.decoder_res_blocks = 1
    model.latent_dim = 128  # the pooled latent vector z that latent editing moves
    model.condition_hidden = 128  # MLP from (password, attributes, z) to FiLM
    model.use_skips = (True, True, True)  # encoder -> decoder skips per level, finest first
    model.residual_output = True  # G predicts a change to its input image
    # "inverse": G draws one key-dependent change, added to anonymize and subtracted to
    # recover, so a wrong key cannot give x back. "conditioned" (the paper's: a direction
    # flag in G's condition) let wrong-key outputs return close to x ("The key pathway").
    model.recovery = "inverse"
    # A fixed random Fourier map of the key: one flipped bit looks like a new key.
    model.key_features = 256
    model.key_frequency = 3.0  # radians per key bit in that map
    model.discriminator_widths = (16, 32, 64)  # PatchGAN per scale
    model.discriminator_scales = 2
    model.classifier_widths = (16, 32, 64)
    # C's identity embedding reads every position of its last map ("flatten", as the
    # attacker does) rather than the mean and max over positions ("pooled"): G must then
    # change where things are, not only what lies inside the face (e48, e49).
    model.classifier_embedding_head = "flatten"
    model.embedding_dim = 64  # identity embedding f(x)
    model.key_predictor_widths = (16, 32, 64)
    model.club_hidden = 128
    # What the networks compute in: "bfloat16" on TPUs/GPUs halves activation memory and
    # doubles matmul throughput; parameters, optimiser states and losses stay float32.
    model.dtype = "float32"

    config.loss = loss = ml_collections.ConfigDict()  # weights (METHOD.md section 4)
    # LSGAN on x_A, x_R, x_W. Small: at 1.0 G settles on the identity map (a real image
    # is what D likes best) before the key terms can act ("Training core: quality").
    loss.adversarial = 0.1
    loss.recovery = 100.0  # L1(x_R, x)
    # How much of the recovery gradient reaches x_A: it shapes x_A to be undone by its own
    # key only; 0.6 linked fewest faces of 0.1 / 0.3 / 0.6 / 1.0 ("Recovery's gradient").
    loss.recovery_grad_scale = 0.6
    loss.keep_anonymized = 30.0  # hinge: mean |x_A - x| at most keep_margin
    loss.keep_margin = 0.16  # in [-1, 1] units per pixel
    loss.change_anonymized = 30.0  # hinge: x_A at least change_margin from x, and from x_A2
    loss.change_margin = 0.06
    # hinge: mean |x_W - x| at least wrong_margin (~1.5x keep_margin: with inverse recovery
    # |x_W - x| ~ |r(p) - r(p')|). 60, not 30: a wrong key that changes little is linked.
    loss.wrong_distance = 60.0
    loss.wrong_margin = 0.25
    loss.attributes = 5.0  # BCE of C's key-attribute logits on x_A (target a_t)
    # (1 + cos(f(x_A), f(x))) / 2 and for x_W. 4, not 2: fewer faces linked at two seeds,
    # recovery unchanged (e34).
    loss.identity_embedding = 4.0
    loss.club = 0.1  # CLUB upper bound on I(f(x); f(x_A))
    loss.diversity = 2.0  # (1 + cos(f(x_A), f(x_A2))) / 2: two passwords, two people
    loss.wrong_diversity = 1.0  # (1 + cos(f(x_W), f(x_A))) / 2
    loss.key_information = 2.0  # BCE of Q's password-bit logits from (x, x_A)
    loss.recovered_embedding = 2.0  # (1 - cos(f(x_R), f(x))) / 2: x_R is x's person
    # C on real images: a contrastive loss on f(x) (positives: other photos of the person
    # in the batch; a softmax over the training people learned nothing in a short run),
    # the 40 attributes, and the key attributes again at this weight.
    loss.classifier_contrastive = 1.0
    loss.contrastive_temperature = 0.1
    loss.classifier_key_attributes = 4.0
    loss.classifier_adversarial = 0.5  # C also links x_A and x_W back to f(x)
    # A colour-blind critic: C learns from a recoloured copy of this share of its batch,
    # and sees this share of generated faces recoloured, so G cannot fool it by retinting,
    # which the attacker sees through (e31).
    loss.classifier_recolour = 0.5
    loss.critic_recolour = 0.5
    loss.ramp_steps = 200  # non-reconstruction generator terms ramp in linearly

    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 2e-4  # Adam, per network below as multipliers of this
    optim.b1 = 0.5
    optim.b2 = 0.999
    optim.warmup_steps = 50
    optim.decay_to = 0.1  # cosine decay to this fraction of the peak by num_steps
    optim.generator_lr_scale = 5.0  # E, G, Q
    optim.discriminator_lr_scale = 1.0  # D
    optim.classifier_lr_scale = 5.0  # C
    optim.club_lr_scale = 1.0  # q

    config.train = train = ml_collections.ConfigDict()
    # 800 C warm-up steps and 5,200 full steps: the README command in ~18 min on 2 CPU
    # cores. 4,000 full steps linked twice as many faces ("Recovery's gradient").
    train.num_steps = 6000
    # Images read per step (8 people x 4 photos), split over all processes and devices.
    train.global_batch_size = 32
    # G and D train on every m-th image (one photo per person), C's real-image losses on
    # all 32: C learns people from more pairs at little cost; one wrong password bit
    # fails more often (e44-e47). None: G and D train on the whole batch.
    train.generator_batch_size = 16
    # The first steps train C alone (~20x cheaper than a full step), so the generator's
    # identity and attribute terms start from a classifier that sees something.
    train.classifier_warmup_steps = 800
    # Per-step decay of moving averages of E and G that inference, samples and the
    # evaluation use (0: the live params). 0.999 linked no fewer faces (e40, e41).
    train.ema_decay = 0.0
    train.log_every_steps = 50
    train.checkpoint_every_steps = 300
    train.sample_every_steps = 300
    train.num_samples = 8  # rows in each sample grid
    train.max_checkpoints = 3

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1  # devices on the data axis (-1: all that fsdp leaves)
    mesh.fsdp = 1  # devices that shard the parameters (and also split the batch)

    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.split = "test"  # people never seen in training
    evaluation.num_images = 512  # the held-out summary (SDN's own classifier)
    evaluation.batch_size = 64  # SDN images per jitted call in every evaluation
    # After training (and with --mode evaluate): the independent attacker's evaluation,
    # eval/report.json and report.md (sdn_jax/evaluation/evaluate.py).
    evaluation.full_report = True
    evaluation.report = report = ml_collections.ConfigDict()
    report.max_people = 200  # the whole default test split
    # Probe faces per person, each with its own random key: 800 faces, so a rate near
    # 0.05 has a sampling error of ~0.01.
    report.probes_per_person = 4
    # Known people; 0 skips the split. The validation split holds 4 photos of each: the
    # gallery gets 3, the probe 1.
    report.validation_people = 200
    report.security = True  # the security study (sdn_jax/evaluation/security.py)
    # FID / KID and two-sample tests of the outputs against real photos
    # (sdn_jax/evaluation/realism.py). FID / KID need the Inception weights; without them
    # the report says how to get them and gives the two-sample tests.
    report.realism = True

    # The independent attacker (sdn_jax/evaluation/attacker.py), trained once per workdir
    # on original training photos only ("Evaluation: attacker", "A gallery attacker").
    evaluation.attacker = attacker = ml_collections.ConfigDict()
    attacker.seed = 20250101  # its own, never config.seed
    attacker.far = 0.01  # verification threshold: this share of different-person pairs pass
    attacker.calibration_people = 100  # train people held out to fix the threshold
    # At most this many train photos (whole people; None: all 24,000 here).
    attacker.max_train_images = ml_collections.config_dict.placeholder(int)
    # Photos of each person in its gallery: 4 rather than 1 verified more originals and
    # linked no more anonymized faces.
    attacker.gallery_photos = 4
    attacker.input_size = 32
    # Three stride-2 convs, no res blocks, 4,000 steps: as strong as a wider network with
    # res blocks at 58% of its CPU time ("A cheaper, stronger attacker").
    attacker.widths = (32, 64, 128)
    attacker.res_blocks = 0  # per stage after the first, in both networks
    attacker.embedding_dim = 128
    attacker.num_steps = 4000  # identity steps (fewer: faster, lower true-accept rate)
    attacker.people_per_batch = 32
    attacker.photos_per_person = 4
    attacker.margin = 0.2  # CosFace additive cosine margin
    attacker.scale = 16.0  # CosFace logit scale
    attacker.recolour_probability = 0.5
    # Share of its training images with a damaged face centre: faces with scrambled eyes
    # and mouth are still caught by outline, hair and pose.
    attacker.damage_probability = 0.25
    attacker.learning_rate = 3e-3
    attacker.weight_decay = 5e-4
    # Its attribute network: at the data's resolution (None) or at this size.
    attacker.attribute_input_size = ml_collections.config_dict.placeholder(int)
    attacker.attribute_widths = (16, 32, 64, 128)
    attacker.attribute_steps = 2400  # (fewer: faster, weaker on smiles)
    attacker.attribute_batch_size = 64
    attacker.key_attribute_weight = 4.0  # loss weight of model.key_attributes (others: 1)
    attacker.log_every_steps = 100
    attacker.batch_size = 256  # images per jitted call when embedding

    # The security study (sdn_jax/evaluation/security.py); the random-key attack
    # dominates its time.
    evaluation.security = security = ml_collections.ConfigDict()
    security.seed = 20250303  # the faces' right keys and every wrong key derive from it
    security.num_faces = 128
    # Wrong-password distances in bits; 0 (the right key), 1 and K/2 are always added.
    security.hamming_distances = (0, 1, 2, 4, 8, 16)
    security.num_random_keys = 1000  # best-of-N random-key attack
    security.random_attack_faces = 16
    security.jpeg_qualities = (95, 75)
    security.resize_factor = 2  # down by this factor and back up
    security.batch_size = 64  # faces per compiled call
    security.keys_per_call = 250  # random keys per compiled call (one face each)
    security.kdf_repeats = 3  # scrypt timings; the fastest counts

    # The realism judge (sdn_jax/evaluation/realism.py, two_sample.py). The Inception
    # pass dominates it; the real photos' features are cached beside the prepared
    # dataset, so each evaluation computes only the outputs'.
    evaluation.realism = realism = ml_collections.ConfigDict()
    realism.seed = 20250404  # the two-sample tests' split of the people and their judges
    # Faces judged (of the 800 test probes; the first photo of each of the 200 people
    # first): the Inception pass (~14 images/s on 2 cores) over 4 outputs of 400 faces takes
    # ~2 min; the 3 real sets' features are cached after the first evaluation. FID is
    # biased upward at small samples: compare FIDs only at the same number of faces.
    realism.num_faces = 400
    realism.kid_subsets = 100  # KID: mean and std over this many random subsets
    # Faces per subset (at most the number of faces): well below num_faces, or every
    # subset is the whole set and the std says nothing (1,000 gave std 0 at 400 faces).
    realism.kid_subset_size = 100
    # Images per Inception call. With XLA's own convolutions (sdn_jax.compiler) a CPU runs
    # 8 and 50 alike (2 cores: 14.4-15.1 images/s); under YNN's, 8 was faster (7 vs 6).
    realism.inception_batch_size = 8
    # The CNN judge: 600 Adam steps of 64 images, ~15 s per output on 800 + 800 faces on
    # 2 busy cores. On the default run's anonymized faces (seed 0) 300 steps told 0.93 of
    # them from real photos, 800 steps 0.96.
    realism.cnn_steps = 600
    realism.cnn_batch_size = 64
    # The pixel judge: full-batch Adam (< 1 s); 100 to 1,000 steps and L2 1e-3 to 1e-1
    # gave the same accuracies within 0.02 on the default run's outputs (blurred photos
    # at 1,000 steps: 0.69, not 0.76).
    realism.logistic_steps = 300
    realism.logistic_l2 = 1e-2
    return config
