"""The requirement files and pyproject.toml agree: the locks, the pins, the entry points."""

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;#]+)")
# Test and lint tools, and TensorFlow (TFDS is read without it): never runtime needs.
NOT_RUNTIME = {"pytest", "pytest-timeout", "ruff", "scikit-image", "pip-tools", "tensorflow"}


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    """{normalised name: version} of `name==version` lines; other requirement lines fail."""
    pins = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(("-r ", "-c ")):
            continue
        match = PIN.match(line)
        assert match, f"not pinned with ==: {raw!r}"
        pins[_name(match[1])] = match[3]
    return pins


def _file_pins(name: str) -> dict[str, str]:
    return _pins((ROOT / name).read_text().splitlines())


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_runtime_lock_pins_everything_and_no_test_tools():
    top, lock = _file_pins("requirements.in"), _file_pins("requirements.txt")
    assert lock.items() >= top.items(), "run tools/lock_requirements.sh"
    assert not NOT_RUNTIME & lock.keys()
    # The lock covers every transitive dependency: far more than the top-level list.
    assert len(lock) > 2 * len(top)


def test_dev_lock_is_the_runtime_lock_plus_the_tools():
    lock, dev = _file_pins("requirements.txt"), _file_pins("requirements-dev.txt")
    tools = _file_pins("requirements-dev.in")
    assert dev.items() >= lock.items(), "run tools/lock_requirements.sh"
    assert dev.items() >= tools.items()
    assert {"pytest", "pytest-timeout", "ruff", "scikit-image"} <= tools.keys()


def test_pyproject_dependencies_match_the_in_files():
    project = _pyproject()["project"]
    assert _pins(project["dependencies"]) == _file_pins("requirements.in")
    assert _pins(project["optional-dependencies"]["dev"]) == _file_pins("requirements-dev.in")


def test_entry_points_are_zero_argument_functions():
    scripts = _pyproject()["project"]["scripts"]
    assert set(scripts) == {"sdn-train", "sdn-anonymize", "sdn-deanonymize", "sdn-export"}
    for target in scripts.values():
        module, function = target.split(":")
        # Parsed, not imported: sdn_jax.main defines absl flags that other modules also define.
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
        assert found, target
        args = found[0].args
        assert len(args.defaults) == len(args.args) and not args.posonlyargs, target
