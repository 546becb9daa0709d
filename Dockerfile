# syntax=docker/dockerfile:1
#
# One image for the three services: python -m services.frontend | services.selection |
# services.model_container (the pod's command, or the CMD below, picks one).
#
# Why one image and not three: the services share all of services/ and every
# dependency (grpcio, numpy, scikit-learn, OpenTelemetry); three images would hold the
# same layers three times and need three builds, scans and pulls per release. A model
# image is this image plus the model: `FROM clipper-mesh`, then COPY a joblib file or
# pip install a package (see deploy/README.md).
#
#   docker build -t clipper-mesh:0.1.0 .
#   docker run --rm -p 1337:1337 -e CLIPPER_FRONTEND_HOST=0.0.0.0 \
#       -e CLIPPER_MANAGEMENT_TOKEN=... -e CLIPPER_MESH_SECRET=... clipper-mesh:0.1.0
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the project as `make .venv/.installed` and `make proto` do -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml itself, so this layer is rebuilt only when it changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY protos/ protos/
COPY services/ services/
# The stubs exactly as `make proto` generates them (grpcio-tools from the project's pins),
# then the project itself, not editable, into the virtual environment.
RUN rm -rf services/generated && mkdir -p services/generated \
    && python -m grpc_tools.protoc -Iservices/generated=protos \
        --python_out=. --pyi_out=. --grpc_python_out=. $(find protos -name '*.proto') \
    && find services/generated -type d -exec touch {}/__init__.py \; \
    && pip install --no-deps . \
    && python -c "import services.generated.clipper.v1.clipper_pb2_grpc"

# The example digits models (scikit-learn's bundled data set, no download), for the
# example model Deployment in deploy/base: /opt/clipper/models/digits-*.joblib.
RUN python -m services.mesh.digits /opt/clipper/models

# --- runtime: the virtual environment and the models; no compilers, no pip cache ----------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="clipper-mesh" \
      org.opencontainers.image.description="Prediction-serving mesh: frontend, selection service, model container"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1
RUN groupadd --system --gid 10001 clipper \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin clipper \
    && mkdir -p /opt/clipper/.run \
    && chown 10001:10001 /opt/clipper/.run
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/clipper/models /opt/clipper/models
# Embedded state (the default, one node only) goes to .run/ here; on Kubernetes it is Redis.
WORKDIR /opt/clipper
# Numeric, so that Kubernetes can verify runAsNonRoot.
USER 10001:10001
# frontend gRPC, selection gRPC, model container gRPC (as deploy/ sets it), Prometheus metrics
EXPOSE 1337 1338 7000 9090
ENTRYPOINT ["python", "-m"]
CMD ["services.frontend"]
