# greencam — two commands on a fresh machine: `make install`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch/torchvision for this platform; override e.g. TORCH_SPEC="torch torchvision" for the newest.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
MODEL  ?= tiny

.PHONY: install test lint format bench checkpoints clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet $(TORCH_SPEC)
	# sam2 is an sdist whose build imports torch: build it against the torch above,
	# without its optional CUDA extension (greencam does not use it).
	SAM2_BUILD_CUDA=0 $(PIP) install --quiet --no-build-isolation sam2==1.1.0
	$(PIP) install --quiet --no-build-isolation -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check greenscreen_cam tests
	$(VENV)/bin/ruff format --check greenscreen_cam tests
	$(VENV)/bin/mypy greenscreen_cam

format: install
	$(VENV)/bin/ruff format greenscreen_cam tests
	$(VENV)/bin/ruff check --fix greenscreen_cam tests

# Benchmarks (CPU by default): see docs/benchmarks.md for recorded results.
bench: install
	$(PY) -m greenscreen_cam bench --synthetic --random-weights --model $(MODEL) --resolution 256 --frames 30
	$(PY) -m greenscreen_cam bench --compositor --frames 200

checkpoints: install
	$(PY) -m greenscreen_cam download $(MODEL)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
