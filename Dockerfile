# syntax=docker/dockerfile:1
#
# Image for the Workflow reconciler daemon (deploy/ runs it on Kubernetes).
#
#   docker build \
#     --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#     -t workflow-reconciler:0.1.0 .
#   docker run --rm workflow-reconciler:0.1.0 --help
#
# The image runs as the unprivileged user 10001 (the uid deploy/ expects) and
# works with a read-only root filesystem: it writes only to RECONCILER_STATE_DIR
# (/var/lib/reconciler) and /tmp, which Kubernetes mounts as emptyDirs.

# Base image: an exact Python patch release on Debian 12 "bookworm", the same
# in both stages so that the virtualenv built in the first runs unchanged in
# the second. A tag can be re-pushed (security rebuilds of the same release);
# to pin the exact bytes as well, pass the digest of that tag, e.g.
#   --build-arg PYTHON_DIGEST=@sha256:<digest from `docker buildx imagetools inspect`>
# (left empty here: no digest was recorded from a registry this was written against).
ARG PYTHON_VERSION=3.11.14
ARG PYTHON_DIGEST=""

# ---------------------------------------------------------------------------
# builder: install the project and its dependencies into /opt/venv
# ---------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm${PYTHON_DIGEST} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv

WORKDIR /src
# Only what the package build needs (see .dockerignore).
COPY pyproject.toml README.md ./
COPY reconciler/ ./reconciler/

# A regular (non-editable) install: the wheel is built in a temporary
# directory, the sources stay behind in this stage. pip byte-compiles the
# modules here, since the runtime image cannot write .pyc files.
RUN /opt/venv/bin/pip install .

# ---------------------------------------------------------------------------
# runtime image
# ---------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm${PYTHON_DIGEST}

ARG PYTHON_VERSION
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
ARG SOURCE_URL=https://github.com/example/workflow-reconciler

# Debian package versions: the bookworm candidates of `apt-cache policy` at the
# time of writing (git from the 12.x point release, openssh-client likewise).
# Debian keeps only the newest build of a package in the archive, so when a
# security update supersedes these the build fails at apt-get install: update
# them (apt-cache policy git openssh-client in a bookworm container), or pass
# an empty value (--build-arg GIT_VERSION=) to take the current one.
ARG GIT_VERSION=1:2.39.5-0+deb12u3
ARG OPENSSH_CLIENT_VERSION=1:9.2p1-2+deb12u10

LABEL org.opencontainers.image.title="workflow-reconciler" \
      org.opencontainers.image.description="GitOps reconciler daemon for DataOS v2alpha batch Workflows" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim-bookworm"

# git and ssh clone the manifests repository (https with a token, or ssh with
# a key and known_hosts); the base image already has ca-certificates.
# ${VAR:+=${VAR}} turns "git" into "git=<version>" when a version is given.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        "git${GIT_VERSION:+=${GIT_VERSION}}" \
        "openssh-client${OPENSSH_CLIENT_VERSION:+=${OPENSSH_CLIENT_VERSION}}" \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 reconciler \
 && useradd --uid 10001 --gid 10001 --home-dir /home/reconciler --create-home \
        --shell /usr/sbin/nologin reconciler \
 && mkdir -p /var/lib/reconciler \
 && chown 10001:10001 /var/lib/reconciler

# Owned by root: the application cannot modify its own code.
COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECONCILER_STATE_DIR=/var/lib/reconciler

USER 10001:10001
WORKDIR /home/reconciler

# Health endpoints (/healthz, /readyz) of `reconciler daemon`. No HEALTHCHECK:
# Kubernetes ignores it and uses the probes in deploy/base/deployment.yaml.
EXPOSE 8080

ENTRYPOINT ["reconciler"]
CMD ["daemon"]
