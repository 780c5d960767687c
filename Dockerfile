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
# Dependencies first, from pyproject's base list (the torch-free serving set; training lives in the "train"
# extra), so that a code change does not reinstall them.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt
COPY README.md ./
COPY backbone backbone
COPY detector detector
COPY runtime runtime
COPY service service
COPY eval eval
# pip keeps the bytecode it compiles: the read-only container could not write it, and start-up is faster.
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps . \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

# --- runtime: Python, the virtualenv, the demo model, an unprivileged user --------------------------------------
FROM ${BASE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app \
    && mkdir /models && chown app /models
COPY --from=build /opt/venv /opt/venv
COPY models/demo.onnx /opt/shufflenet-detect/models/demo.onnx
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SERVICE_CHECKPOINT=/opt/shufflenet-detect/models/demo.onnx \
    SERVICE_HOST=0.0.0.0 \
    SERVICE_PORT=8000
# Your own models: mount them here and set SERVICE_CHECKPOINT=/models/<name>.onnx (or .pt with a torch install).
VOLUME ["/models"]
USER 10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('SERVICE_PORT', '8000')}/healthz\", timeout=4)"]
CMD ["python3", "-m", "service"]
