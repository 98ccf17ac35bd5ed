#!/usr/bin/env bash
# Install vlreward from uv.lock into $VLREWARD_PREFIX (default /opt/vlreward): what both images run at
# build time, and what CI runs in a fresh folder (tests/deploy/test_docker.py), since no Docker engine
# runs there. Usage: docker/install.sh [--dependencies-only] EXTRA...
#   (the GPU image: serve gpu; the CPU image: serve vllm train)
# --dependencies-only installs what the lock gives these extras but not the project, from pyproject.toml,
# uv.lock and the Makefile alone: an image's dependency layer, which a source edit does not rebuild.
set -euo pipefail
source_dir=$(cd "$(dirname "$0")/.." && pwd)
prefix=${VLREWARD_PREFIX:-/opt/vlreward}
python=${PYTHON:-python3}
project=()
if [ "${1:-}" = "--dependencies-only" ]; then
  project=(--no-install-project)
  shift
fi
if [ "$#" -eq 0 ]; then
  echo "usage: $0 [--dependencies-only] EXTRA... (e.g. serve gpu)" >&2
  exit 2
fi
# uv at the version the Makefile pins (one place), once per prefix.
uv_version=$(sed -n 's/^UV_VERSION *:= *//p' "$source_dir/Makefile")
if ! "$prefix/tools/bin/uv" --version 2>/dev/null | grep -q " $uv_version"; then
  "$python" -m venv "$prefix/tools"
  "$prefix/tools/bin/python" -m pip install -q --no-cache-dir "uv==$uv_version"
fi
extras=()
for extra in "$@"; do extras+=(--extra "$extra"); done
cd "$source_dir"
# --locked: exactly uv.lock; --no-editable: the project is installed like a wheel (the source can go).
UV_PROJECT_ENVIRONMENT="$prefix/venv" "$prefix/tools/bin/uv" sync --locked --no-editable --compile-bytecode \
  --python "$python" "${project[@]}" "${extras[@]}"
if [ "${#project[@]}" -gt 0 ]; then
  echo "dependencies installed in $prefix/venv (extras: $*)"
  exit 0
fi
"$prefix/venv/bin/vlreward" --help >/dev/null
echo "vlreward installed in $prefix/venv (extras: $*)"
