"""Where an anonymized image's salt and KDF version come from (sdn_jax.file_keys): its PNG
text, else the manifest beside it, else version 1; a tampered record is refused. No
scrypt runs here."""

import json

import pytest

from sdn_jax import file_keys, passphrase

SALT = bytes(range(16))


def test_the_png_text_then_the_manifest_then_version_1():
    text = file_keys.png_text(SALT)
    assert json.loads(text["sdn_jax.kdf"]) == passphrase.kdf_record()
    assert file_keys.key_source(text, None, None) == (3, SALT, "file")
    assert file_keys.key_source(file_keys.png_text(SALT, 2), None, None) == (2, SALT, "file")
    entry, kdf = {"salt": SALT.hex()}, {**passphrase.kdf_record(), "salt": "one per image"}
    assert file_keys.key_source({}, entry, kdf) == (3, SALT, "manifest")
    assert file_keys.key_source({"Software": "an editor"}, None, None) == (1, None, "none")
    assert file_keys.key_source({}, {"output": "a.png"}, kdf) == (1, None, "none")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A weaker N would make a recovered image a cheap test of passphrase guesses.
        ({"sdn_jax.kdf": json.dumps({**passphrase.kdf_record(), "n": 1024}),
          "sdn_jax.salt": SALT.hex()}, "its sdn_jax.kdf text n is 1024, but key derivation "
         "version 3 is n=131072: refused"),
        ({"sdn_jax.kdf": "{", "sdn_jax.salt": SALT.hex()}, "its sdn_jax.kdf text is not JSON"),
        ({"sdn_jax.salt": SALT.hex()}, "its PNG has a sdn_jax.salt text but no sdn_jax.kdf"),
        ({"sdn_jax.kdf": json.dumps(passphrase.kdf_record()), "sdn_jax.salt": "00 11" * 6},
         "its sdn_jax.salt text is '00 1100 1100 1100 1100 1100 11', not 32 hex digits"),
        ({"sdn_jax.kdf": json.dumps({**passphrase.kdf_record(), "version": 7})},
         "unknown key derivation version 7"),
    ],
)  # fmt: skip
def test_a_bad_record_is_refused_naming_it(text, message):
    with pytest.raises(ValueError) as error:
        file_keys.key_source(text, None, None)
    assert message in str(error.value)


def test_the_manifest_kdf_is_checked_too():
    weak = {**passphrase.kdf_record(), "n": 2}
    with pytest.raises(ValueError, match="the manifest's kdf n is 2, but"):
        file_keys.key_source({}, {"salt": SALT.hex()}, weak)
