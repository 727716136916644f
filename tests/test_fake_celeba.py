"""tools/fake_celeba.py writes a release that the CelebA reader takes as the official one."""

import numpy as np

from sdn_jax.data import celeba
from tools import fake_celeba


def test_a_fake_release_reads_back_with_few_photo_people_and_disjoint_splits(tmp_path):
    count = fake_celeba.write_fake_release(str(tmp_path), people=20, max_photos=5)
    release = celeba.read_release(tmp_path)
    assert len(release.file_names) == count
    people = np.unique(release.identity_raw, return_counts=True)
    assert len(people[0]) == 20 and people[1].min() >= 2 and people[1].max() <= 5
    assert (people[1] <= 3).any()  # people with 2-3 photos, as in CelebA
    split_people = [set(release.identity_raw[release.partition == p]) for p in range(3)]
    assert all(split_people)
    train, validation, test = split_people
    assert not (train & validation or train & test or validation & test)
