#!/usr/bin/env bash
# deploy/requirements.lock, the edge image's Python dependencies: pyproject's base list and the setuptools that
# builds the package, pinned with the hashes of every file, for Debian bookworm's Python 3.11; then a check that
# every pin has a binary wheel for linux/amd64 and linux/arm64 (the Dockerfile installs wheels only).
# `make lock` runs it with the project's virtualenv (Python 3.11); it needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOCK=deploy/requirements.lock
"$PY" -c 'import sys; sys.exit(None if sys.version_info[:2] == (3, 11) else "lock.sh: needs Python 3.11, the image'"'"'s")'

# PyPI only: not this machine's pip configuration (extra indexes, local wheels, constraints).
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_CONSTRAINT PIP_INDEX_URL PIP_EXTRA_INDEX_URL
"$PY" -m piptools compile --quiet --generate-hashes --allow-unsafe --build-deps-for=wheel --strip-extras \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --output-file "$LOCK" pyproject.toml

# bookworm has glibc 2.36: any manylinux wheel up to that will do.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for arch in x86_64 aarch64; do
    platforms=()
    for tag in manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 \
        manylinux_2_35 manylinux_2_36; do
        platforms+=(--platform "${tag}_$arch")
    done
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: "${platforms[@]}" --python-version 3.11 \
        --implementation cp --abi cp311 --require-hashes -r "$LOCK" -d "$scratch/$arch"
    echo "lock.sh: $(ls "$scratch/$arch" | wc -l) wheels for $arch, each matching its hash"
done
