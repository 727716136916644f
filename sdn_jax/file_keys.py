"""The file commands' keys: where the passphrase comes from, the salt each image carries,
and one scrypt derivation per distinct salt.

An anonymized PNG carries its salt and KDF version in two text chunks (SALT_TEXT,
KDF_TEXT); the manifest repeats them. Neither is secret: the salt only makes every image
(or album) need its own dictionary attack, and the KDF version only says how costly a
guess is. Nothing derived from the passphrase is printed, logged or stored here.
"""

import getpass
import json
import os
import stat
import string
import sys
import time
from collections.abc import Mapping

import numpy as np

from sdn_jax import inference
from sdn_jax import passphrase as passphrase_lib

PASSWORD_ENV = "SDN_PASSWORD"
SALT_TEXT = "sdn_jax.salt"  # PNG text chunk: the salt, hex
KDF_TEXT = "sdn_jax.kdf"  # PNG text chunk: passphrase.kdf_record as JSON
BOM = "\ufeff"
HEX_DIGITS = frozenset(string.hexdigits)


class PassphraseError(Exception):
    """No usable passphrase; str() says why and holds nothing of it."""


def read_passphrase(password_file: str | None, confirm: bool) -> str:
    """From --password-file, else $SDN_PASSWORD, else a prompt (twice when `confirm`)."""
    if password_file is not None:
        return _passphrase_from_file(password_file)
    if PASSWORD_ENV in os.environ:
        if not os.environ[PASSWORD_ENV]:
            raise PassphraseError(f"${PASSWORD_ENV} is empty")
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise PassphraseError(
            f"no passphrase: give --password-file FILE or set ${PASSWORD_ENV} "
            "(or run in a terminal to be asked)"
        )
    passphrase = getpass.getpass("Passphrase: ")
    if not passphrase:
        raise PassphraseError("the passphrase is empty")
    if confirm and getpass.getpass("Passphrase again: ") != passphrase:
        raise PassphraseError("the two passphrases differ")
    return passphrase


def _passphrase_from_file(path: str) -> str:
    try:  # a pipe is fine here: `--password-file <(pass show sdn)` keeps it off the disk
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise PassphraseError(f"cannot read the password file {path}: {error.strerror}") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        print(
            f"warning: the password file {path} is readable by other users "
            f"(mode {stat.filemode(mode)}); `chmod 600 {path}` makes it private",
            file=sys.stderr,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # its message would quote bytes of the passphrase
        text = None
    if text is None:
        raise PassphraseError(f"the password file {path} is not UTF-8 text")
    if text.startswith(BOM):  # Windows editors' "UTF-8 with BOM": not part of the passphrase
        text = text[len(BOM) :]
        print(
            f"note: the password file {path} starts with a byte order mark (BOM): "
            "ignored, not part of the passphrase",
            file=sys.stderr,
        )
    if text.endswith("\n"):  # one line terminator is not part of the passphrase
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if "\n" in text:
        raise PassphraseError(f"the password file {path} holds more than one line")
    if not text:
        raise PassphraseError(f"the password file {path} is empty")
    return text


def warn_if_weak(passphrase: str) -> None:
    """A warning (never a refusal: the user decides) for a guessable passphrase; it says
    neither which rule nor anything else of the passphrase."""
    if passphrase_lib.is_weak(passphrase):
        print(
            f"warning: this passphrase is weak (under {passphrase_lib.MIN_PASSPHRASE_CHARS} "
            f"characters, or fewer than {passphrase_lib.MIN_DISTINCT_CHARS} different ones): "
            "whoever has the outputs can try guesses offline; several words are safer",
            file=sys.stderr,
        )


def png_text(salt: bytes, version: int = passphrase_lib.KDF_VERSION) -> dict[str, str]:
    """The text chunks of an anonymized PNG: its salt and how its key was derived."""
    return {SALT_TEXT: salt.hex(), KDF_TEXT: json.dumps(passphrase_lib.kdf_record(version))}


def parse_salt(value) -> bytes:
    """A salt written as hex; ValueError unless exactly SALT_BYTES of them."""
    digits = 2 * passphrase_lib.SALT_BYTES
    if not (isinstance(value, str) and len(value) == digits and set(value) <= HEX_DIGITS):
        raise ValueError(f"is {repr(value)[:40]}, not {digits} hex digits")
    return bytes.fromhex(value)


def key_source(text: Mapping[str, str], entry: Mapping | None, kdf: Mapping | None):
    """(KDF version, salt or None, where from) of an anonymized image: its PNG text
    chunks, else its entry in the manifest beside it (`entry`, with that manifest's `kdf`
    record), else version 1 (outputs from before salts). ValueError names a bad field."""
    if SALT_TEXT in text or KDF_TEXT in text:
        if KDF_TEXT not in text:
            raise ValueError(f"its PNG has a {SALT_TEXT} text but no {KDF_TEXT}")
        try:
            record = json.loads(text[KDF_TEXT])
        except ValueError:
            raise ValueError(f"its {KDF_TEXT} text is not JSON") from None
        version = _checked(passphrase_lib.check_kdf_record, record, f"its {KDF_TEXT} text")
        if passphrase_lib.kdf_params(version)["salt"] is not None:
            return version, None, "file"
        return version, _checked(parse_salt, text.get(SALT_TEXT), f"its {SALT_TEXT} text"), "file"
    if entry is not None and "salt" in entry and kdf is not None:
        version = _checked(passphrase_lib.check_kdf_record, kdf, "the manifest's kdf")
        return version, _checked(parse_salt, entry["salt"], "its manifest salt"), "manifest"
    return 1, None, "none"


def _checked(check, value, what: str):
    try:
        return check(value)
    except ValueError as error:
        raise ValueError(f"{what} {error}") from None


class KeyMaker:
    """The password vectors of one passphrase, derived once per (KDF version, salt):
    scrypt is slow on purpose (~0.4 s a derivation at versions 2 and 3), an album has one salt,
    and version 1 has one for everyone."""

    def __init__(self, passphrase: str, choices: Mapping[str, bool | None], model: inference.Model):
        self._passphrase, self._choices, self._model = passphrase, choices, model.model_settings
        self._cache: dict = {}
        self.seconds = 0.0  # spent deriving
        passphrase_lib.encode_passphrase(passphrase)  # ValueError now, not at the first image
        passphrase_lib.attributes_to_vector(choices, self._model.key_attributes)  # checked now

    def key(self, version: int, salt: bytes | None) -> inference.Key:
        if (version, salt) not in self._cache:
            start = time.perf_counter()
            self._cache[version, salt] = inference.make_key(
                self._passphrase, self._choices, self._model, salt=salt, kdf_version=version
            )
            self.seconds += time.perf_counter() - start
        return self._cache[version, salt]

    def passwords(self, sources) -> inference.Key:
        """One Key for a batch: a password and attribute row per (version, salt) in
        `sources` (unchosen attributes differ by salt from version 3 on)."""
        keys = [self.key(version, salt) for version, salt in sources]
        return inference.Key(
            password=np.stack([k.password for k in keys]),
            attributes=np.stack([k.attributes for k in keys]),
        )

    def __repr__(self) -> str:
        return "KeyMaker(<secret>)"
