# syntax=docker/dockerfile:1
# threadkeeper: one image for the agent service and the reaper operator.
#   docker build -t threadkeeper .                      # runs `threadkeeper-service serve`
#   docker run ... threadkeeper migrate                  # apply the schema and exit
#   docker run --entrypoint threadkeeper-reaper ... threadkeeper run --namespace NS
# The Helm chart (charts/threadkeeper) sets command/args for each workload.
#
# Base images are pinned by tag. For reproducible production builds also pin the digests
# (`python:3.11.14-slim-bookworm@sha256:...`, `ghcr.io/astral-sh/uv:0.13.9@sha256:...`), e.g.
# with Renovate; no registry is reachable from the machine this file was written on.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: resolve the locked dependencies into /app/.venv ------------------------------
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /uvx /bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=0 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first (cached while only the code changes); every wheel, psycopg[binary]
# included, is prebuilt, so the build stage needs no compiler either.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-dev --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY service ./service
COPY reaper ./reaper
# The project itself as a regular (non-editable) wheel: /src is not needed at run time.
# uv keys its cached build of a local project on pyproject.toml alone, so without
# --reinstall-package (which implies --refresh-package) a warm cache mount would install the
# wheel of an earlier build and the image would run old code.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --reinstall-package threadkeeper

# --- runtime: the same Python base, the venv, a numeric non-root user ----------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" threadkeeper \
    && useradd --system --no-log-init --uid "${UID}" --gid "${UID}" \
       --home-dir /tmp --shell /usr/sbin/nologin threadkeeper
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    THREADKEEPER_LOG_FORMAT=json
WORKDIR /app
# Numeric, so `runAsNonRoot` can verify it without reading /etc/passwd.
USER ${UID}:${UID}
EXPOSE 8000
ENTRYPOINT ["threadkeeper-service"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# --- reaper: the same image with the operator as its default command ------------------------
FROM runtime AS reaper
EXPOSE 9090 8080
ENTRYPOINT ["threadkeeper-reaper"]
CMD ["run"]

# The default target: the service image (the chart runs the reaper from it by command).
FROM runtime
