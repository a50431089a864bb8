# Dataflow Flex Template launcher for `curation run`: the worker image (the same packages,
# project and model folders, so the launcher's checks see what the workers will load) plus
# Google's template launcher, which runs docker/flex/launch.py with the template's
# parameters; it builds the job, submits it and exits (the job commits its own result).
# Build from the repository root, after the worker image:
#   docker build -f docker/launcher.Dockerfile --build-arg WORKER_IMAGE=$REPO/worker:1 \
#     -t $REPO/launcher:1 .
ARG WORKER_IMAGE
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base AS launcher
FROM ${WORKER_IMAGE}

COPY --from=launcher /opt/google/dataflow/python_template_launcher \
  /opt/google/dataflow/python_template_launcher
COPY docker/flex/launch.py /template/launch.py
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launch.py
ENTRYPOINT ["/opt/google/dataflow/python_template_launcher"]
