# Dataflow Flex Template launcher for `curation run`: the template's program checks the
# settings, inputs and models, submits the pipeline to Dataflow and exits.
# Build from the repository root:
#   docker build -f docker/launcher.Dockerfile -t REGION-docker.pkg.dev/PROJECT/curation/launcher:1 .
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base

ENV PIP_NO_CACHE_DIR=1
WORKDIR /template
COPY docker/requirements-worker.txt docker/requirements-worker.txt
RUN pip install -r docker/requirements-worker.txt
COPY pyproject.toml README.md ./
COPY app app
COPY curation curation
COPY models models
COPY pipelines pipelines
RUN pip install ".[gcs,s3]"
COPY docker/flex/launch.py launch.py

ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launch.py
