#!/usr/bin/env bash
# Wheels that take the GPU check to a bare GPU host (no internet; torch 2.11 and transformers 5.17
# there, no FastAPI/pydantic/uvicorn): the project's own wheel plus the small pure-Python or manylinux
# wheels it needs, at the versions uv.lock pins, for CPython 3.12 on x86-64. vLLM's wheel is far too big
# to carry; the check measures the transformers backend. Usage:
#
#   loadtest/gpu_wheels.sh [DIR]          # default .whl (ignore it in .git/info/exclude)
#   # there: pip install --no-index --no-deps --target /tmp/site DIR/*.whl && PYTHONPATH=/tmp/site \
#   #        python3 -m loadtest.gpu_check --size 7b --profile
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.whl}
uv=${UV:-.tools/bin/uv}
# The service's web stack and settings, and transformers with the hub/tokenizer versions it was locked with.
names="fastapi starlette pydantic pydantic-core pydantic-settings uvicorn annotated-types typing-inspection
python-dotenv typing-extensions transformers tokenizers huggingface-hub hf-xet safetensors regex httpx2
httpcore2 truststore click anyio h11 httptools tenacity"
pattern="^($(echo $names | tr ' ' '|'))=="
pins=$("$uv" export --locked --no-hashes --no-emit-project --extra serve --format requirements-txt |
  grep -E "$pattern" | sed 's/ ;.*//')
mkdir -p "$out"
rm -f "$out"/vlreward-*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out" $pins
"$uv" build --wheel -q -o "$out"
ls "$out"
