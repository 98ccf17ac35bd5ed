#!/usr/bin/env bash
# Install vlreward from uv.lock into $VLREWARD_PREFIX (default /opt/vlreward): what both images run at
# build time, and what CI runs in a fresh folder (tests/deploy/test_docker.py), since no Docker engine
# runs there. Usage: docker/install.sh EXTRA...   (the GPU image: serve gpu; the CPU image: serve vllm train)
set -euo pipefail
source_dir=$(cd "$(dirname "$0")/.." && pwd)
prefix=${VLREWARD_PREFIX:-/opt/vlreward}
python=${PYTHON:-python3}
if [ "$#" -eq 0 ]; then
  echo "usage: $0 EXTRA... (e.g. serve gpu)" >&2
  exit 2
fi
# uv at the version the Makefile pins (one place).
uv_version=$(sed -n 's/^UV_VERSION *:= *//p' "$source_dir/Makefile")
"$python" -m venv "$prefix/tools"
"$prefix/tools/bin/python" -m pip install -q --no-cache-dir "uv==$uv_version"
extras=()
for extra in "$@"; do extras+=(--extra "$extra"); done
cd "$source_dir"
# --locked: exactly uv.lock; --no-editable: the project is installed like a wheel (the source can go).
UV_PROJECT_ENVIRONMENT="$prefix/venv" "$prefix/tools/bin/uv" sync --locked --no-editable --compile-bytecode \
  --python "$python" "${extras[@]}"
"$prefix/venv/bin/vlreward" --help >/dev/null
echo "vlreward installed in $prefix/venv (extras: $*)"
