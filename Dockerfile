# llmrpc-server container image. Build from the repository root: docker build -t llmrpc .
#
# Two stages: the first builds a virtualenv with llmrpc[server] from this checkout, the second copies only
# that virtualenv onto a clean slim Python, so no compiler, pip cache or source tree ships.
# tests/test_deploy_image.py runs this file's ENTRYPOINT + CMD and HEALTHCHECK against the local install.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN python -m venv /opt/llmrpc && /opt/llmrpc/bin/pip install ".[server]"

FROM ${PYTHON_IMAGE}
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without resolving names.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin llmrpc \
    && install -d -o 10001 -g 10001 -m 0700 /var/cache/llmrpc
COPY --from=build /opt/llmrpc /opt/llmrpc
# Every setting is also an LLMRPC_* variable: `docker run -e LLMRPC_AUTH_TOKENS=...` etc. Listen on every
# address; callers authenticate with a token from LLMRPC_AUTH_TOKENS (or mTLS): set one, or, for a trusted
# network only, LLMRPC_ALLOW_UNAUTHENTICATED=true. On SIGTERM: 5 s more of serving while health says
# NOT_SERVING (Envoy health-checks every 2 s), then 25 s for in-flight calls (deploy/kubernetes gives the pod
# 40 s: its preStop sleep counts against the same period). The response cache is a per-container SQLite
# file under /var/cache/llmrpc (mount a volume there; with a read-only root it must be one).
ENV PATH=/opt/llmrpc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLMRPC_HOST=[::] \
    LLMRPC_PORT=50051 \
    LLMRPC_GRACE=25 \
    LLMRPC_DRAIN_DELAY=5 \
    LLMRPC_CACHE_PATH=/var/cache/llmrpc/cache.sqlite
USER 10001:10001
WORKDIR /var/cache/llmrpc
EXPOSE 50051
# grpc.health.v1 Check with the grpc health stub the server extra installs (no grpc_health_probe binary).
# Plaintext on loopback: with --tls-cert set, swap insecure_channel for a TLS channel to the served name.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; s = g.HealthStub(grpc.insecure_channel('localhost:' + os.environ.get('LLMRPC_PORT', '50051'))).Check(h.HealthCheckRequest(service='llmrpc.v1.CompletionService'), timeout=3).status; raise SystemExit(s != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["llmrpc-server"]
CMD ["serve"]
