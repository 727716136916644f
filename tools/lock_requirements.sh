#!/usr/bin/env bash
# Regenerates the locked requirement files with pip-tools (pip-compile):
#   requirements.in     -> requirements.txt      (runtime: every transitive package pinned)
#   requirements-dev.in -> requirements-dev.txt  (the runtime lock + test/lint/lock tools)
#
#   bash tools/lock_requirements.sh            # keep the current pins, add what is new
#   bash tools/lock_requirements.sh --upgrade  # re-resolve every unpinned transitive package
#
# Change a top-level dependency in requirements.in (or requirements-dev.in), run this, and
# commit the .in and .txt files together. pip-tools runs from a throwaway venv at the version
# pinned in requirements-dev.txt; resolution uses PyPI (Python 3.11, Linux x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."

pip_tools_version="$(sed -n 's/^pip-tools==\([^ ]*\).*/\1/p' requirements-dev.txt 2>/dev/null || true)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet "pip-tools${pip_tools_version:+==$pip_tools_version}"

compile() {
  CUSTOM_COMPILE_COMMAND="bash tools/lock_requirements.sh" "$tmp/venv/bin/pip-compile" \
    --quiet --strip-extras --no-emit-index-url --no-emit-find-links "$@"
}
compile "$@" --output-file requirements.txt requirements.in
compile "$@" --output-file requirements-dev.txt requirements-dev.in
echo "wrote requirements.txt ($(grep -c '==' requirements.txt) pins)" \
  "and requirements-dev.txt ($(grep -c '==' requirements-dev.txt) pins)"
