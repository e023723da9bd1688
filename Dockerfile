# synaptoroute HTTP service. Build: docker build -t synaptoroute .
# Run:   docker run -p 8000:8000 -e SYNAPTOROUTE_API_KEY=change-me -v routes:/data synaptoroute
# See docs/deployment.md.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY synaptoroute ./synaptoroute
# The model (all-MiniLM-L6-v2 INT8 ONNX and its tokenizer) is a pip dependency:
# installing the package bundles it into the virtual environment.
# httptools and uvloop: uvicorn's C HTTP parser and event loop (more requests/s).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[server,cli]" "httptools>=0.6,<1" "uvloop>=0.19,<1"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SYNAPTOROUTE_STORE=/data/routes.db
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin synaptoroute \
    && mkdir /data && chown synaptoroute:synaptoroute /data
USER synaptoroute
# Fail the build, not the first request, if the bundled model cannot load or encode.
RUN python -c "from synaptoroute import Encoder; v = Encoder().encode(['build check']); assert v.shape == (1, 384), v.shape"
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"
STOPSIGNAL SIGTERM
# Listening on all interfaces: route changes need SYNAPTOROUTE_API_KEY (or add --read-only).
CMD ["synaptoroute", "serve", "--host", "0.0.0.0", "--port", "8000", "--store", "/data/routes.db"]
