# vlreward developer entry points. `make test` on a fresh clone builds everything it needs.
#
# The environment is uv.lock, installed exactly (`uv sync --locked`); `make lock` updates the lock
# after a change to pyproject.toml's dependencies. uv itself is pinned and kept in $(TOOLS).
VENV       ?= .venv
TOOLS      ?= .tools
UV_VERSION := 0.13.9
PYTHON     ?= python3
PY         := $(VENV)/bin/python
UV         := $(TOOLS)/bin/uv
# vLLM's GPU build where an NVIDIA GPU answers (or VLLM_BUILD=gpu), its CPU build otherwise.
VLLM_BUILD ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo vllm)
EXTRAS     ?= dev $(VLLM_BUILD)
SYNC       := UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --compile-bytecode --python $(PYTHON) \
              $(addprefix --extra ,$(EXTRAS))

.PHONY: dev frameworks prometheus test lint lock serve clean

$(UV):
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION)

# Bytecode is compiled at install: this environment sets PYTHONDONTWRITEBYTECODE, so otherwise every
# process would compile transformers from source again.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(SYNC)
	touch $@

dev: $(VENV)/.installed

# verl's and OpenRLHF's own code, for the adapter tests only (tests/requirements-frameworks.txt says why
# they are kept out of .venv).
FRAMEWORKS := .frameworks
$(FRAMEWORKS)/.installed: tests/requirements-frameworks.txt | $(VENV)/.installed
	rm -rf $(FRAMEWORKS)
	$(UV) pip install -q --no-deps --target $(FRAMEWORKS) --python $(PY) -r tests/requirements-frameworks.txt
	touch $@

frameworks: $(FRAMEWORKS)/.installed

# promtool and prometheus for the monitoring tests: a new-enough copy on PATH, else Debian's package
# unpacked into $(PROMETHEUS) without root (tests/tools/prometheus.sh says which version and why).
PROMETHEUS := $(TOOLS)/prometheus
prometheus:
	tests/tools/prometheus.sh $(PROMETHEUS)

lock: $(UV)
	$(UV) lock

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# tests/test_packaging.py compares the environment with the lock for these extras, and builds the
# wheel into fresh environments with the same uv.
test: dev frameworks prometheus lint
	PATH="$(abspath $(PROMETHEUS))/bin:$$PATH" VLREWARD_FRAMEWORKS=$(abspath $(FRAMEWORKS)) UV=$(abspath $(UV)) VLREWARD_EXTRAS="$(EXTRAS)" $(PY) -m pytest -q -p no:cacheprovider --durations=15

serve: dev
	$(VENV)/bin/vlreward serve

clean:
	rm -rf $(VENV) $(TOOLS) $(FRAMEWORKS) .pytest_cache .ruff_cache
