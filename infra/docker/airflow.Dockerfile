# syntax=docker/dockerfile:1.7
# synthcat Airflow image: api-server, scheduler (LocalExecutor, runs the tasks), dag-processor and
# triggerer. Airflow tasks only plan, submit Ray jobs and publish; the GPU work runs on Ray, so
# this image installs the CPU builds of torch/torchvision (a fraction of the CUDA wheels' size).
# Build from the repository root:
#
#   docker build -f infra/docker/airflow.Dockerfile -t synthcat-airflow:0.1.0 .
#
# (infra/airflow/docker-compose.yaml builds it for you.) BuildKit reads
# infra/docker/airflow.Dockerfile.dockerignore for this Dockerfile.

ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11

ARG AIRFLOW_VERSION
# Same Ray as the cluster: the Jobs API client and server should match (tests check it).
ARG RAY_VERSION=2.60.0
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The base image's unprivileged `airflow` user (uid 50000); pip installs into its environment.
USER 50000

# CPU wheels: `torch==X` also matches the index's `X+cpu` builds.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# README* is pyproject's `readme`; the glob keeps the build working where it is absent.
COPY --chown=50000:0 pyproject.toml README* /opt/synthcat/
COPY --chown=50000:0 pipeline /opt/synthcat/pipeline
COPY --chown=50000:0 validators /opt/synthcat/validators
COPY --chown=50000:0 examples /opt/synthcat/examples
COPY --chown=50000:0 dags /opt/airflow/dags

# Naming apache-airflow==the base version keeps pip from up- or downgrading Airflow itself
# (the Airflow image's documented way to add packages).
RUN pip install "apache-airflow==${AIRFLOW_VERSION}" "ray[data]==${RAY_VERSION}" "/opt/synthcat"
