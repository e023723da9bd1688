# synaptoroute HTTP service. Build: docker build -t synaptoroute .
# Run:   docker run -p 8000:8000 -e SYNAPTOROUTE_API_KEY=change-me -v routes:/data synaptoroute
# See docs/deployment.md (how to update the base image and the dependency lock).

# An exact Python release on an exact Debian release: a rebuild gets the same interpreter.
# No digest: none could be verified where this file was written (docs/deployment.md).
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, each file checked against its sha256 in the lock (docker/lock.sh
# writes it): a change to the source alone reuses this layer instead of reinstalling them.
COPY docker/requirements.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md LICENSE* NOTICE* ./
COPY synaptoroute ./synaptoroute
# The build tools came from the lock too, so nothing unpinned is fetched here.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip check

FROM python:3.11.14-slim-bookworm
ARG VERSION=0.2.1
ARG REVISION=unknown
LABEL org.opencontainers.image.title="synaptoroute" \
      org.opencontainers.image.description="A local semantic router: sends a text to one of several named routes by embedding similarity." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
# SYNAPTOROUTE_PORT is read by both 'serve' and 'healthcheck', so changing it moves both.
# ONNX Runtime threads default to the container's CPU quota; SYNAPTOROUTE_THREADS overrides.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SYNAPTOROUTE_STORE=/data/routes.db \
    SYNAPTOROUTE_PORT=8000
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 10001 synaptoroute \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin synaptoroute \
    && mkdir /data && chown 10001:10001 /data
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# Fail the build, not the first request, if the bundled model cannot load or encode.
RUN python -c "from synaptoroute import Encoder; v = Encoder().encode(['build check']); assert v.shape == (1, 384), v.shape"
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["synaptoroute", "healthcheck"]
STOPSIGNAL SIGTERM
# Listening on all interfaces: route changes need SYNAPTOROUTE_API_KEY (or add --read-only).
# The store is SYNAPTOROUTE_STORE's (above): a --store here won over -e SYNAPTOROUTE_STORE,
# and the service and `docker exec ... synaptoroute routes` used two stores.
CMD ["synaptoroute", "serve", "--host", "0.0.0.0"]
