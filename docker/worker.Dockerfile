# Dataflow GPU worker (custom SDK container) for `curation run` on the Dataflow runner.
# Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/curation/worker:1 .
# Python and Beam match the launcher image (docker/launcher.Dockerfile) and
# docker/requirements-worker.txt.
FROM apache/beam_python3.11_sdk:2.77.0

ENV PIP_NO_CACHE_DIR=1
WORKDIR /opt/curation
COPY docker/requirements-worker.txt docker/requirements-worker.txt
RUN pip install -r docker/requirements-worker.txt
COPY pyproject.toml README.md ./
COPY app app
COPY curation curation
COPY models models
COPY pipelines pipelines
RUN pip install ".[gcs,s3]"

# Model weights baked into the image, so workers never download from a hub (apache/beam
# #25286): put folders made with `hf download` under weights/ and point --captioner /
# --filter at /opt/weights/... (an empty weights/ folder is fine when they come from gs://).
COPY weights /opt/weights

# The SDK image's entry point (/opt/apache/beam/boot) stays the entry point.
