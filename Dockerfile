# syntax=docker/dockerfile:1
#
# Image for the Workflow reconciler daemon.
#
#   docker build --build-arg VERSION=0.1.0 -t workflow-reconciler:0.1.0 .
#   docker run --rm workflow-reconciler:0.1.0 --help

# Base image, pinned by tag (python:<PYTHON_VERSION>-slim-bookworm).
ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------
# builder: build a wheel of the project and install it into /opt/venv
# ---------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

COPY pyproject.toml README.md ./
COPY reconciler/ ./reconciler/

RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install /dist/*.whl

# ---------------------------------------------------------------------------
# final: runtime image
# ---------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG VERSION=0.1.0
ARG SOURCE_URL=https://github.com/example/workflow-reconciler

LABEL org.opencontainers.image.title="workflow-reconciler" \
      org.opencontainers.image.description="GitOps reconciler daemon for DataOS v2alpha batch Workflows" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# git + ssh for cloning manifests repositories.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECONCILER_STATE_DIR=/var/lib/reconciler

RUN groupadd --gid 10001 reconciler \
 && useradd --uid 10001 --gid 10001 --home-dir /home/reconciler --create-home \
        --shell /usr/sbin/nologin reconciler \
 && mkdir -p /var/lib/reconciler \
 && chown 10001:10001 /var/lib/reconciler

USER 10001
WORKDIR /home/reconciler

ENTRYPOINT ["reconciler"]
CMD ["daemon"]
