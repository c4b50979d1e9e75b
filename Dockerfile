# ClientPress services: one image for all five services.
#
#   docker build -t clientpress .
#   docker run --rm -e SERVICE=identity -e IDENTITY_HOST=0.0.0.0 ... clientpress          # serve
#   docker run --rm -e SERVICE=identity ... clientpress migrate                             # migrations
#
# SERVICE picks the service (identity | portals | invitations | mailer | gateway); the
# optional argument is the command of `python -m services.<SERVICE>` (serve, the default,
# or migrate). Configuration is environment variables only: see deploy/.env.example.
#
# Only classic Dockerfile features are used (no BuildKit-only syntax), so the legacy
# builder of docker-compose v1 builds it too.

# The Debian release is named: `python:3.11-slim` alone moves to the next one (bookworm to
# trixie) under the same name, so a rebuild of the same commit would ship another OS.
# For a build that never changes, pin the digest too:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
# builder: installs the locked dependencies (requirements.lock) and the project into a
# virtualenv at /opt/venv. Every dependency ships manylinux wheels for amd64 and arm64,
# so no compiler is needed; if a platform lacks a wheel, add build-essential here (it
# never reaches the final image).
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# 1. Dependencies alone, from the lock file, every file checked against its sha256: this
#    layer is rebuilt only when requirements.lock changes, not on every source edit.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# 2. The build backend (pyproject's [build-system]: setuptools), its entry in the dev lock
#    file, hashes and all: pip's build isolation would fetch the newest setuptools>=68
#    from the index, unpinned and unchecked, into every build.
COPY requirements-dev.lock ./
RUN awk '/^setuptools==/{found=1} found{print} found && !/\\$/{exit}' requirements-dev.lock \
        > /tmp/build-requirements.txt \
    && pip install --require-hashes --no-deps -r /tmp/build-requirements.txt

# 3. The project itself: setuptools builds a wheel from pyproject.toml (with the package
#    data: migrations, templates, static files) and pip installs it into the venv, with
#    nothing more resolved (--no-deps: the lock file is the whole tree) or fetched
#    (--no-build-isolation: the setuptools above).
COPY pyproject.toml ./
COPY libs ./libs
COPY services ./services
#    The runtime needs neither pip nor setuptools: they leave the venv afterwards.
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && python -m pip uninstall --yes pip setuptools

# ---------------------------------------------------------------------------------------
# runtime: the venv (dependencies + the installed clientpress package) and two small
# launch scripts. No compiler, no pip in the venv, no curl; runs as uid 10001.
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="clientpress" \
      org.opencontainers.image.description="ClientPress services (identity, portals, invitations, mailer, gateway)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 clientpress \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin clientpress

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY deploy/docker-entrypoint.sh deploy/healthcheck.py /app/deploy/
RUN chmod 0755 /app/deploy/docker-entrypoint.sh && chmod 0644 /app/deploy/healthcheck.py

# Nothing in the image is writable by the service user: the root filesystem can be
# mounted read-only (Kubernetes mounts an emptyDir on /tmp).
USER 10001:10001

# gateway 8080 (public); identity 8101, portals 8102, invitations 8103, mailer 8104; and
# their management ports (/healthz, /readyz, /metrics): 9080, 9101, 9102, 9103, 9104.
EXPOSE 8080 8101 8102 8103 8104 9080 9101 9102 9103 9104

# Liveness of whichever service runs here: GET /healthz on 127.0.0.1:<its management port>,
# with the standard library (the slim image has no curl). Compose and Kubernetes check
# /readyz too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "/healthz"]

ENTRYPOINT ["/app/deploy/docker-entrypoint.sh"]
CMD ["serve"]
