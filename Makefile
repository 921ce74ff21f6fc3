# greencam — two commands on a fresh machine: `make install`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch/torchvision for this platform; override e.g. TORCH_SPEC="torch torchvision" for the newest.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
MODEL  ?= tiny

.PHONY: install test test-fast lint format bench bench-gpu checkpoints clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile requirements/sam2.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet $(TORCH_SPEC)
	# sam2 is an sdist whose build imports torch: build it against the torch above,
	# without its optional CUDA extension (greencam does not use it), from the hash-pinned file.
	SAM2_BUILD_CUDA=0 $(PIP) install --quiet --no-build-isolation --no-deps --require-hashes -r requirements/sam2.txt
	$(PIP) install --quiet --no-build-isolation -e ".[dev]"
	touch $@

# Every test (tests needing a GPU, a webcam or a virtual camera device skip with a reason when absent).
test: install
	$(PY) -m pytest -q

# The fast subset (about 2 minutes on 2 CPU cores): everything not marked slow.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check greenscreen_cam tests
	$(VENV)/bin/ruff format --check greenscreen_cam tests
	$(VENV)/bin/mypy greenscreen_cam

format: install
	$(VENV)/bin/ruff format greenscreen_cam tests
	$(VENV)/bin/ruff check --fix greenscreen_cam tests

# Benchmarks: see docs/benchmarks.md for recorded results and what each line measures.
# BENCH_DEVICE=cuda BENCH_RES=1024 make bench  for a GPU.
BENCH_CLIP   ?= ../shared/data/videos/default_juggle.mp4
BENCH_DEVICE ?= cpu
BENCH_RES    ?= 256
BENCH_SRC    := $(if $(wildcard $(BENCH_CLIP)),$(BENCH_CLIP),--synthetic)
BENCH_ARGS   := --random-weights --model $(MODEL) --device $(BENCH_DEVICE) --resolution $(BENCH_RES)
bench: install
	$(PY) -m greenscreen_cam bench $(BENCH_SRC) $(BENCH_ARGS) --frames 30
	$(PY) -m greenscreen_cam bench $(BENCH_SRC) $(BENCH_ARGS) --frames 30 --e2e
	$(if $(wildcard $(BENCH_CLIP)),$(PY) -m greenscreen_cam bench $(BENCH_CLIP) $(BENCH_ARGS) --live --seconds 20,@echo "live benchmark skipped: $(BENCH_CLIP) not found")
	$(PY) -m greenscreen_cam bench --compositor --frames 300

# Everything in one go on a CUDA machine (no download, no install: run `make install` once, or carry
# the .venv): bare tracker tiny..large at 512/1024; tiny also with its steady-state step as a CUDA graph
# (--compile on) against the official VOS-optimized predictor in the same run, and with torch.compile /
# reduce-overhead of the image encoder; ops and host syncs per frame, deviation from eager fp32; live loop
# on 720p and 1080p clips at 30 fps, offline pipeline, compositor torch path, serve worker step.
# Results go to $(BENCH_GPU_OUT)/bench-<device>-<time>.{json,md}. DEVICE=cpu runs small settings.
DEVICE         ?= cuda
BENCH_GPU_OUT  ?= bench-results
BENCH_GPU_ARGS ?= $(if $(filter cpu,$(DEVICE)),--small,)
bench-gpu:
	@test -x $(PY) || { echo "bench-gpu: $(PY) not found; run make install first (or carry the .venv)"; exit 1; }
	$(PY) -m greenscreen_cam.bench suite --device $(DEVICE) --out $(BENCH_GPU_OUT) \
		$(if $(wildcard $(BENCH_CLIP)),--clip $(BENCH_CLIP),) $(BENCH_GPU_ARGS)

checkpoints: install
	$(PY) -m greenscreen_cam download $(MODEL)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
