# syntax=docker/dockerfile:1
# greenroom worker image: `docker build -t greenroom .`
# The default command runs a worker on every queue; compose and Kubernetes
# pass `worker --queues <queue>` per process type.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/greenroom
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY shared ./shared
COPY workers ./workers
COPY observability ./observability
# The same command the tests run in a clean venv (tests/integration/test_image.py).
RUN /opt/greenroom/bin/pip install --constraint constraints.txt .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin greenroom
COPY --from=build /opt/greenroom /opt/greenroom
ENV PATH=/opt/greenroom/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9300 \
    METRICS_DIR=/tmp/greenroom-metrics
WORKDIR /tmp
USER 10001
EXPOSE 9300
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["greenroom", "healthcheck"]
# Exec form: the worker is PID 1 and receives SIGTERM itself.
ENTRYPOINT ["greenroom"]
CMD ["worker"]
