"""manifest.json of the file commands: written whatever happens, read back with every
field's type checked.

Written (atomically, whatever ends the command: success, failures, Ctrl-C, a crash): per
input its output (and its salt) or its error, or `"interrupted": true` when the command
stopped before it; and what a recovery or a resumed run must match: the run, step and
weights fingerprint, the attributes in the run's key order, the KDF version and
parameters. Nothing derived from the passphrase.

Read by deanonymize beside its inputs (to name a different run, step, weights or
attributes, and to find an image's salt) and by `--resume` in the output folder. A
field of the wrong type is a problem that names the field and is ignored: never a
traceback.
"""

import dataclasses
import json
import os
import string
from collections.abc import Mapping, Sequence

import sdn_jax
from sdn_jax import image_files
from sdn_jax import passphrase as passphrase_lib
from sdn_jax.atomic_files import written_atomically
from sdn_jax.latent import editing

MANIFEST = "manifest.json"
ANONYMIZE, DEANONYMIZE = "sdn_jax.anonymize", "sdn_jax.deanonymize"
MAX_BYTES = 64 * 2**20  # a larger manifest is not read (it would be a million images)
_SHOWN_PROBLEMS = 5
# What a resumed run must share with the one it finishes (and kdf's fields but the salt).
RESUME_FIELDS = ("tool", "fingerprint", "step", "image_size", "attributes", "fit")


def header(tool: str, model, choices: Mapping[str, bool | None], **more) -> dict:
    """The fields that describe a run of a command (`more`: kdf, fit)."""
    return {
        "tool": tool,
        "version": sdn_jax.__version__,
        **({"kdf_version": more["kdf"]["version"]} if "kdf" in more else {}),
        "run": model.source,
        "step": model.step,
        "fingerprint": model.fingerprint,
        "image_size": model.image_size,
        "attributes": dict(choices),  # None (null): unchosen, drawn from each image's key
        **more,
    }


def entry(item: image_files.Item) -> dict:
    """An input's line: its output (and record: salt...), its error, or `interrupted`."""
    line = {"input": item.path, **({"link": item.link} if item.link else {})}
    if item.error is not None:
        return {**line, "error": item.error}
    if not item.done:
        return {**line, "interrupted": True}
    return {**line, "output": item.output, **item.record}


def write(folder: str, head: Mapping, items: Sequence, carried: Sequence[dict] = ()) -> str:
    """Writes `<folder>/manifest.json` in one step; `carried`: entries of a resumed run's
    done outputs that no input of this run named (they stay listed)."""
    entries = [entry(item) for item in items] + list(carried)
    failed = sum("error" in e for e in entries)
    interrupted = sum("interrupted" in e for e in entries)
    manifest = {
        **head,
        "complete": not interrupted,
        "num_succeeded": len(entries) - failed - interrupted,
        "num_failed": failed,
        "num_interrupted": interrupted,
        "images": entries,
    }
    path = os.path.join(folder, MANIFEST)
    with written_atomically(path, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return path


# ------------------------------------------------------------------------- reading


def _show(value) -> str:
    names = {dict: "an object", list: "a list", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _text(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"is {_show(value)}, not text")
    return value


def _number(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"is {_show(value)}, not a whole number")
    return value


def _flag(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"is {_show(value)}, not true or false")
    return value


def _hex(digits: int):
    def check(value) -> str:
        if not (isinstance(value, str) and len(value) == digits and set(value) <= _HEX):
            raise ValueError(f"is {_show(value)}, not {digits} hex digits")
        return value

    return check


_HEX = set(string.hexdigits)


def _file_name(value) -> str:
    """An output's name: a plain name inside the folder (never a path out of it)."""
    name = _text(value)
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"is {_show(value)}, not a file name")
    return name


def _object_of(valid, what: str):
    """A check of a JSON object whose every value passes `valid` (named `what`)."""

    def check(value) -> dict:
        if not isinstance(value, dict):
            raise ValueError(f"is {_show(value)}, not an object")
        for name, item in value.items():
            if not valid(item):
                raise ValueError(f".{name} is {_show(item)}, not {what}")
        return value

    return check


_attributes = _object_of(lambda v: v is None or isinstance(v, bool), "true, false or null")
_edit = _object_of(
    lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number of degrees"
)


def _kdf(value) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"is {_show(value)}, not an object")
    salt = _hex(2 * passphrase_lib.SALT_BYTES)
    checks = {"version": _number, "algorithm": _text, "n": _number, "r": _number,
              "p": _number, "salt": _text, "album_salt": salt,
              "unchosen_attributes": _text}  # fmt: skip
    for field, check in checks.items():
        if field in value:
            try:
                check(value[field])
            except ValueError as error:
                raise ValueError(f".{field} {error}") from None
    return value


_FIELDS = {"tool": _text, "run": _text, "step": _number, "fingerprint": _hex(16),
           "image_size": _number, "attributes": _attributes, "kdf_version": _number,
           "kdf": _kdf, "fit": _text, "edit": _edit, "images": lambda v: v}  # fmt: skip
_ENTRY = {"input": _text, "link": _text, "output": _file_name, "error": _text,
          "interrupted": _flag, "salt": _hex(2 * passphrase_lib.SALT_BYTES),
          "kdf_version": _number}  # fmt: skip


def _checked(raw: Mapping, checks: Mapping, prefix: str, problems: list) -> dict:
    good = {}
    for field, check in checks.items():
        if field not in raw:
            continue
        try:
            good[field] = check(raw[field])
        except ValueError as error:
            message = str(error)
            label = f"{prefix}{field}{message if message.startswith('.') else ' ' + message}"
            problems.append(f"{label}: ignored")
    return good


@dataclasses.dataclass
class Recorded:
    """A manifest read from disk: only the fields that passed their checks."""

    path: str
    fields: dict
    entries: list[dict]  # the images' entries (each with its good fields, and an input)
    problems: list[str]  # one line per bad field, naming it

    def entry_for(self, name: str) -> dict | None:
        """The entry of the output file `name` (or of `<its stem>.png`: a copy)."""
        by_output = {e["output"]: e for e in self.entries if "output" in e}
        stem = os.path.splitext(name)[0]
        return by_output.get(name) or by_output.get(f"{stem}.png")

    def warn(self, stream) -> None:
        for problem in self.problems[:_SHOWN_PROBLEMS]:
            print(f"warning: {self.path}: {problem}", file=stream)
        if len(self.problems) > _SHOWN_PROBLEMS:
            more = len(self.problems) - _SHOWN_PROBLEMS
            print(f"warning: {self.path}: {more} more bad field(s) ignored", file=stream)


def read(path: str) -> Recorded | None:
    """The manifest at `path` (None if there is none); unreadable is one problem."""
    if not os.path.lexists(path):
        return None
    try:
        with image_files.open_regular(path) as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ValueError(f"is larger than {MAX_BYTES // 2**20} MiB")
        raw = json.loads(data)
    except (OSError, ValueError, image_files.ImageError) as error:
        reason = getattr(error, "strerror", None) or str(error).split("\n")[0][:200]
        return Recorded(path, {}, [], [f"cannot be read ({reason}): ignored"])
    if not isinstance(raw, dict):
        return Recorded(path, {}, [], [f"is {_show(raw)}, not an object: ignored"])
    problems: list[str] = []
    fields = _checked(raw, _FIELDS, "", problems)
    images = fields.pop("images", [])
    if not isinstance(images, list):
        problems.append(f"images is {_show(images)}, not a list: ignored")
        images = []
    entries = []
    for i, raw_entry in enumerate(images):
        if not isinstance(raw_entry, dict):
            problems.append(f"images[{i}] is {_show(raw_entry)}, not an object: ignored")
            continue
        good = _checked(raw_entry, _ENTRY, f"images[{i}].", problems)
        if "input" in good:
            entries.append(good)
    return Recorded(path, fields, entries, problems)


# --------------------------------------------------------------------- comparing


def _attribute_text(choices: Mapping) -> str:
    """The --attributes that give `choices` ("none" when every one is unchosen)."""
    given = [f"{name}={int(value)}" for name, value in choices.items() if value is not None]
    return ",".join(given) or "none"


def _flag_text(choices: Mapping) -> str:
    if all(value is None for value in choices.values()):
        return "no --attributes"
    return f"--attributes {_attribute_text(choices)}"


def _as_recovered(choices: Mapping, kdf) -> list:
    """`choices`' values as a recovery under the manifest's KDF record uses them: an
    unchosen attribute is 0 before version 3 (drawn from the key from then on)."""
    try:  # no record: a manifest from before salts (version 1)
        draws = passphrase_lib.draws_attributes(kdf.get("version")) if kdf else False
    except (AttributeError, ValueError):  # a bad record: already a warning of its own
        draws = True
    return [False if value is None and not draws else value for value in choices.values()]


def _edit_text(edit: Mapping | None) -> str:
    return f"--edit {editing.edit_text(edit)}" if edit else "no --edit"


def recovery_warnings(
    recorded: Recorded, model, choices: Mapping[str, bool | None], edit: Mapping | None = None
) -> list[str]:
    """What differs between the anonymize run that a manifest beside deanonymize's inputs
    records and this recovery (its choices and --edit): each a line ("warning: ..." or
    "note: ...")."""
    f, where = recorded.fields, recorded.path
    if f.get("tool") != ANONYMIZE:
        return []
    lines = []
    same_weights = f.get("fingerprint") == model.fingerprint
    if "fingerprint" in f and not same_weights:
        lines.append(
            f"warning: {where} says weights {f['fingerprint']} anonymized these images; this "
            f"checkpoint's are {model.fingerprint}: other weights recover other faces"
        )
    if "step" in f and f["step"] != model.step:
        lines.append(
            f"warning: {where} says step {f['step']} anonymized these images; this is step "
            f"{model.step} (--step chooses)"
        )
    if "run" in f and f["run"] != model.source:
        lines.append(
            f"note: {where} says run {f['run']} anonymized these images; this is "
            f"{model.source}, with the same weights"
            if same_weights
            else f"warning: {where} says run {f['run']} anonymized these images; this is "
            f"{model.source}"
        )
    if "attributes" in f:
        recorded_names, names = list(f["attributes"]), list(model.key_attributes)
        if recorded_names != names:
            lines.append(
                f"warning: {where} names the key attributes {', '.join(recorded_names)} (in "
                f"this order); this run's are {', '.join(names)}: another run's key"
            )
        elif _as_recovered(f["attributes"], f.get("kdf")) != _as_recovered(choices, f.get("kdf")):
            lines.append(
                f"warning: {where} says they were anonymized with "
                f"{_flag_text(f['attributes'])} (this recovery: {_flag_text(choices)}); "
                "other attributes recover other faces"
            )
    if dict(f.get("edit") or {}) != dict(edit or {}):
        lines.append(
            f"warning: {where} says they were anonymized with {_edit_text(f.get('edit'))} "
            f"(this recovery: {_edit_text(edit)}); recovery needs the same edit"
        )
    if "kdf" in f:
        try:
            passphrase_lib.check_kdf_record(f["kdf"])
        except ValueError as error:
            lines.append(f"warning: {where}: kdf {error}")
    return lines


def resume_mismatches(recorded: Recorded, head: Mapping) -> list[str]:
    """Why a run with `head` cannot finish the one `recorded` describes (empty: it can).
    The passphrase cannot be compared: nothing derived from it is stored."""
    mismatches = list(recorded.problems)
    pairs = [(f, recorded.fields.get(f), head[f]) for f in RESUME_FIELDS if f in head]
    kdf = recorded.fields.get("kdf", {})
    pairs += [(f"kdf.{k}", kdf.get(k), v) for k, v in head.get("kdf", {}).items()
              if k != "album_salt"]  # fmt: skip
    for field, got, want in pairs:
        if field == "attributes" and isinstance(got, dict):
            got, want = _attribute_text(got), _attribute_text(want)
        if got is None:
            mismatches.append(f"it records no {field}")
        elif got != want:
            mismatches.append(f"{field} {got} (this run: {want})")
    return mismatches


def apply_resume(items, recorded: Recorded, output: str) -> list[dict]:
    """Marks the items whose output the resumed run wrote (and is still there) as done;
    returns the entries of such outputs for inputs not given this time (kept listed)."""
    done = {}
    for line in recorded.entries:
        path = os.path.join(output, line.get("output", ""))
        if "output" in line and os.path.isfile(path) and not os.path.islink(path):
            done[line["input"]] = line
    for item in items:
        line = done.pop(item.path, None)
        if line is not None:
            item.error, item.output, item.done = None, line["output"], True
            item.record = {k: line[k] for k in ("salt", "kdf_version") if k in line}
    return list(done.values())


def beside_inputs(
    inputs, model, choices: Mapping[str, bool], stream, edit: Mapping | None = None
) -> dict[str, Recorded]:
    """The anonymize manifests in deanonymize's input folders, by folder; prints their bad
    fields and what differs from this recovery (recovery_warnings) on `stream`."""
    found = {}
    folders = {p if os.path.isdir(p) else os.path.dirname(p) or "." for p in map(str, inputs)}
    for folder in sorted(folders):
        recorded = read(os.path.join(folder, MANIFEST))
        if recorded is None:
            continue
        recorded.warn(stream)
        for line in recovery_warnings(recorded, model, choices, edit):
            print(line, file=stream)
        if recorded.fields.get("tool") == ANONYMIZE:
            found[os.path.normpath(folder)] = recorded
    return found
