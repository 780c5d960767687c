# The edge image: the detection service on ONNX Runtime, with no torch, no compilers and no CUDA libraries.
# Same file for linux/amd64 and linux/arm64:
#   docker buildx build --platform linux/amd64,linux/arm64 -t shufflenet-detect:latest .
# Runtime settings are the service's SERVICE_* environment variables (see `python -m service --help`).
ARG BASE=debian:bookworm-slim

# --- build: a virtualenv holding the package and its serving dependencies (all binary wheels) -------------------
FROM ${BASE} AS build
# A TLS-inspecting proxy's CA certificates, if any (see deploy/extra-ca/README.md); this stage only.
COPY deploy/extra-ca/ /usr/local/share/ca-certificates/
# Unpinned apt packages on purpose: bookworm's stable updates are security fixes we want at every build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first, so that a code change does not reinstall them: pyproject's base list (the torch-free serving
# set; training lives in the "train" extra) as locked in deploy/requirements.lock (`make lock`): exact versions
# for Python 3.11 on amd64 and arm64, every file checked against its hash, binary wheels only, and setuptools
# for building the package below. Two builds install the same bytes.
COPY deploy/requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes --only-binary=:all: \
        --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY backbone backbone
COPY detector detector
COPY runtime runtime
COPY service service
COPY eval eval
# Built with the locked setuptools (no build isolation, no index). pip keeps the bytecode it compiles: the
# read-only container could not write it, and start-up is faster.
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation --no-index . \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

# --- runtime: Python, the virtualenv, the COCO model with its NOTICE, an unprivileged user ----------------------------
FROM ${BASE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app \
    && mkdir /models && chown app /models
COPY --from=build /opt/venv /opt/venv
COPY deploy/healthcheck.py /opt/shufflenet-detect/healthcheck.py
COPY models/coco.onnx /opt/shufflenet-detect/models/coco.onnx
COPY NOTICE /opt/shufflenet-detect/NOTICE
COPY licenses /opt/shufflenet-detect/licenses
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SERVICE_CHECKPOINT=/opt/shufflenet-detect/models/coco.onnx \
    SERVICE_HOST=0.0.0.0 \
    SERVICE_PORT=8000 \
    SERVICE_PROBE_PORT=8001
# Your own models: mount a folder at /models (`-v ./models:/models:ro`) and set SERVICE_CHECKPOINT=/models/<name>.onnx
# (or .pt with a torch install). Not a VOLUME: that would leave an anonymous volume behind every `docker run`.
USER 10001
WORKDIR /tmp
EXPOSE 8000
# Healthy means ready (GET /readyz): a container whose model never loaded is not. Asked on the probe port (8001,
# bound to the container's own 127.0.0.1, not published), where a flood of clients on 8000 does not delay it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/shufflenet-detect/healthcheck.py"]
CMD ["python3", "-m", "service"]
