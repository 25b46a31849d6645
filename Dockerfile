# syntax=docker/dockerfile:1
# txc: the coordinator node (`txc serve`), its CLI, and the demo participant services.
#
#   docker build -t txc .
#   docker run --rm -p 7000:7000 -e TXC_HOST=0.0.0.0 \
#       -e TXC_DATABASE_URL=postgresql+psycopg://user:password@db:5432/txc txc
#
# docker-compose.yml runs a 3-node group with it; see deploy/README.md.

ARG PYTHON_IMAGE=python:3.11-slim

# Build the project's wheel and every dependency's in a throw-away stage.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY coordinator ./coordinator
COPY participant_sdk ./participant_sdk
COPY txc_demo ./txc_demo
COPY migrations ./migrations
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# `pip install .` of the wheel built above, offline.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels txc
COPY --chmod=0755 deploy/txc-entrypoint.py /usr/local/bin/txc-entrypoint
RUN groupadd --system --gid 10001 txc \
    && useradd --system --uid 10001 --gid txc --create-home --home-dir /home/txc \
       --shell /usr/sbin/nologin txc
USER txc
WORKDIR /home/txc

# The coordinator's port (TXC_PORT); the dashboard is served at /dashboard on it.
EXPOSE 7000
# Liveness; slim images have no curl. Services on another port override it (compose does).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TXC_PORT', '7000'), timeout=4)"

# txc-entrypoint turns TXC_*_FILE / PGPASSWORD_FILE (Docker secrets) into variables, then
# runs `txc ARGS`.
ENTRYPOINT ["txc-entrypoint", "txc"]
CMD ["serve"]
