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
    model.condition_hidden = 128  # MLP from (direction, password, attributes, z) to FiLM
    model.use_skips = (True, True, True)  # encoder -> decoder skips per level, finest first
    model.residual_output = True  # G predicts a change to its input image
    # "conditioned" (the paper: a direction flag in G's condition) or "inverse": G draws one
    # key-dependent change, added to anonymize and subtracted to recover (models/decoder.py).
    # "inverse": a wrong key subtracts another key's change, so it cannot give x back
    # (with "conditioned" the wrong-password output landed 2-3 dB from the right one).
    model.recovery = "inverse"
    model.key_features = 256  # >0: a fixed random Fourier map of the key (one bit -> new key)
    model.key_frequency = 3.0  # radians per key bit in that map
    model.warp_pixels = 0.0  # >0 (inverse only): G also moves pixels by up to this much
    # G's change is drawn in a space that is linear for pixels in +-linear_range and
    # saturates beyond (models/decoder.py); 0: tanh's pre-activation space.
    model.linear_range = 0.0
    model.discriminator_widths = (16, 32, 64)  # PatchGAN per scale
    model.discriminator_scales = 2
    model.classifier_widths = (16, 32, 64)
    # C's identity embedding reads "flatten"ed features (every position of the last map,
    # as the attacker does) or "pooled" ones (mean and max over positions). A pooled C was
    # fooled by changes inside the face while the outline stayed; over two seeds the
    # flattened one let the attacker link 0.049 of anonymized and 0.034 of wrong-password
    # faces (pooled: 0.060, 0.052) (docs/experiments.md, e48, e49).
    model.classifier_embedding_head = "flatten"
    model.embedding_dim = 64  # identity embedding f(x)
    model.key_predictor_widths = (16, 32, 64)
    model.club_hidden = 128

    config.loss = loss = ml_collections.ConfigDict()  # weights (METHOD.md section 4)
    # LSGAN on x_A, x_R, x_W. At 1.0 the generator settles on the identity map (a real
    # image is what D likes best) before the key terms can act: docs/experiments.md.
    loss.adversarial = 0.1
    loss.recovery = 100.0  # L1(x_R, x)
    # How much of the recovery gradient reaches x_A: it shapes x_A to be undone by its own
    # key only. 0.6 beat 0.1, 0.3 and 1.0 on every attacker figure (docs/experiments.md).
    loss.recovery_grad_scale = 0.6
    loss.keep_anonymized = 30.0  # hinge: mean |x_A - x| at most keep_margin
    loss.keep_wrong = 0.0  # hinge: mean |x_W - x_A| at most keep_margin (off: it held x_W at x)
    # In [-1, 1] units per pixel. With inverse recovery |x_W - x| ~ |r(p) - r(p')|, so
    # wrong_margin needs room: ~1.5x keep_margin.
    loss.keep_margin = 0.16
    loss.change_anonymized = 30.0  # hinge: x_A at least change_margin from x, and from x_A2
    loss.change_margin = 0.06
    # hinge: mean |x_W - x| at least wrong_margin. 60, not 30: the wrong-password faces the
    # attacker links are those a wrong key changes least; at 60 it links 0.072 of them over
    # two seeds (30: 0.088), and one wrong bit fails for 0.930 (0.907) (docs/experiments.md).
    loss.wrong_distance = 60.0
    loss.wrong_margin = 0.25
    loss.attributes = 5.0  # BCE of C's key-attribute logits on x_A (target a_t)
    # The same on x_W (target a'). Off: with inverse recovery x_W = x + r(a) - r(a') and
    # asking it to show a' fights the structure (C's attributes on x_A fell to 0.53).
    loss.wrong_attributes = 0.0
    loss.identity_removal = 0.0  # -log(1 - p_C(y | x_A)) and for x_W (needs C's softmax)
    # (1 + cos(f(x_A), f(x))) / 2 and for x_W. 4, not 2 (with the colour-blind critic
    # below): over two seeds the attacker links 0.060 of anonymized faces (2: 0.080) and
    # 0.045 of wrong-password ones (0.072), recovery still 34.8 dB (docs/experiments.md).
    loss.identity_embedding = 4.0
    # The identity term on copies of x_A and x_W with a damaged face centre (0: off).
    loss.identity_damaged = 0.0
    loss.identity_power = 1.0  # that term to this power: > 1 pushes hardest on faces still alike
    # Away from whom: "photo" (f(x)) or "person" (the mean of f over their photos in the batch).
    loss.identity_target = "photo"
    loss.club = 0.1  # CLUB upper bound on I(f(x); f(x_A))
    loss.diversity = 2.0  # (1 + cos(f(x_A), f(x_A2))) / 2: two passwords, two people
    loss.wrong_diversity = 1.0  # (1 + cos(f(x_W), f(x_A))) / 2
    loss.key_information = 2.0  # BCE of Q's password-bit logits from (x, x_A)
    loss.recovered_identity = 0.0  # CE(C_id(x_R), y) (off: C's softmax head is off)
    loss.recovered_embedding = 2.0  # (1 - cos(f(x_R), f(x))) / 2: x_R is x's person
    # C on real images: a contrastive loss on f(x) (positives: other photos of the person
    # in the batch), a softmax over the training people (off: with 1,000 people seen less
    # than once each it learned nothing and spoiled the embedding, docs/experiments.md),
    # the 40 attributes, and the key attributes again at this weight.
    loss.classifier_contrastive = 1.0
    loss.contrastive_temperature = 0.1
    loss.classifier_identity = 0.0
    loss.classifier_key_attributes = 4.0
    loss.classifier_adversarial = 0.5  # C also links x_A and x_W back to f(x)
    # Share of a damaged-face-centre copy of C's batch in its contrastive loss (0: none).
    loss.classifier_damage = 0.0
    # Share of that copy recoloured (augment.recolour): C must know people by shape, not tint.
    loss.classifier_recolour = 0.5
    # C sees each generated face in the generator loss through a random shift of up to
    # this many pixels and a mirror with this probability (0, 0: as generated; shifts and
    # mirrors linked more faces, e30).
    loss.critic_shift = 0
    loss.critic_flip = 0.0
    # ... and recoloured with this probability. With classifier_recolour, a colour-blind
    # critic: G cannot fool it by retinting, which the attacker (trained on recoloured
    # photos) sees through (e31: fewer faces linked on every row).
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
    # 800 classifier warm-up steps (~20 s) + 5,200 full steps (~6.5 steps/s on 2 CPU
    # cores at 32 px) + ~1 min setup: the whole README command in ~18.2 min. 4,000 full
    # steps linked 2x more anonymized faces (docs/experiments.md, "Recovery's gradient").
    train.num_steps = 6000
    # Images read per step. Split evenly over all JAX processes and data devices.
    train.global_batch_size = 32
    # G and D train on this many of each batch's images (every m-th: steps.generator_share),
    # C's real-image losses on all of them (None: all). 32 read (8 people x 4 photos) and
    # 16 for G: C identifies 0.41 of unseen people (0.29 on 16) and one wrong password bit
    # failed verification for 0.95-0.97 of faces at two seeds (16: 0.91, 0.96), at about
    # the same step rate. 64 read did as well but cost 16% more per step
    # (docs/experiments.md, e44-e47).
    train.generator_batch_size = 16
    # The first steps train C alone (~20x cheaper than a full step), so the generator's
    # identity and attribute terms start from a classifier that sees something.
    train.classifier_warmup_steps = 800
    # Per-step decay of moving averages of E and G that inference, samples and the
    # evaluation then use (0: the live params). 0.999 linked no fewer faces (e40, e41).
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
    evaluation.num_images = 512
    evaluation.batch_size = 64
    # After training (and with --mode evaluate): the independent attacker's evaluation,
    # eval/report.json and report.md (sdn_jax/evaluation/evaluate.py).
    evaluation.full_report = True
    # Probe faces per person (each with its own random key); the attacker's gallery of
    # each person is eval.attacker.gallery_photos other photos of them.
    evaluation.report = ml_collections.ConfigDict()
    evaluation.report.max_people = 200  # the whole default test split
    evaluation.report.probes_per_person = 4  # 800 faces: sampling error ~0.01 at rate 0.05
    # Known people; 0 skips the split. The validation split holds 4 photos of each: the
    # gallery gets 3, the probe 1.
    evaluation.report.validation_people = 200
    # The independent attacker (sdn_jax/evaluation/attacker.py), trained once per workdir.
    evaluation.attacker = ml_collections.ConfigDict()
    evaluation.attacker.num_steps = 4000  # identity steps (fewer: faster, lower TAR)
    evaluation.attacker.attribute_steps = 2400  # (fewer: faster, weaker on smiles)
    evaluation.attacker.calibration_people = 100  # train people held out to fix the threshold
    evaluation.attacker.gallery_photos = 4  # photos of each person the attacker verifies against
    evaluation.attacker.far = 0.01  # the verification threshold's false-accept rate
    # The security study (sdn_jax/evaluation/security.py); the attack dominates its time.
    evaluation.security = ml_collections.ConfigDict()
    evaluation.security.num_faces = 128
    evaluation.security.num_random_keys = 1000  # best-of-N random-key attack
    evaluation.security.random_attack_faces = 16
    return config
