# One image for every technogan Job (synth, scrape, segment, train, evaluate, promote,
# package), the MLflow server and TorchServe.
#
#   docker build -t REGISTRY/technogan:0.1.0 .                                  # CPU (default)
#   docker build --build-arg VARIANT=gpu -t REGISTRY/technogan:0.1.0-cuda .     # CUDA 12.8
#
# The GPU variant puts the same Python and virtualenv on a pinned CUDA runtime base and
# installs the torch build for that CUDA version (TORCH_CUDA must match CUDA_IMAGE).
ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${PYTHON_IMAGE} AS python

# ---------------------------------------------------------------- build: the virtualenv
FROM python AS build
ARG VARIANT
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from PyTorch's index for the variant (PyPI's default torch is a multi-GB CUDA build)
RUN if [ "$VARIANT" = gpu ]; then index="https://download.pytorch.org/whl/${TORCH_CUDA}"; \
    else index="https://download.pytorch.org/whl/cpu"; fi \
    && pip install --index-url "$index" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY serving ./serving
COPY tracking ./tracking
# a regular (non-editable) install: the final stage needs only /opt/venv
RUN pip install . && rm -rf /src

# ---------------------------------------------------------------- runtime bases
FROM python AS base-cpu

FROM ${CUDA_IMAGE} AS base-gpu
# the same CPython the virtualenv was built with, and the libraries it links
COPY --from=python /usr/local /usr/local
# hadolint ignore=DL3008 # apt versions: whatever the pinned CUDA base's Ubuntu release ships (security updates stay in)
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3t64 libsqlite3-0 libffi8 libbz2-1.0 liblzma5 zlib1g libreadline8t64 \
    && rm -rf /var/lib/apt/lists/* \
    && ldconfig

# ---------------------------------------------------------------- final
# hadolint ignore=DL3006 # base-cpu / base-gpu are stages above, each FROM a pinned tag
FROM base-${VARIANT}
# ffmpeg decodes audio (pydub, segment) and encodes the mp3/ogg answers with libmp3lame and
# libvorbis (in Debian's build; Ubuntu's comes from the same packaging); a Java 17 runtime
# runs TorchServe's frontend.
# hadolint ignore=DL3008 # apt versions: whatever the pinned base's Debian/Ubuntu release ships (security updates stay in)
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib MLFLOW_DISABLE_TELEMETRY=true
# a fixed non-root UID (the chart's runAsUser) owning only /data
RUN groupadd --gid 10001 technogan \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin technogan \
    && mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
# Serving (the Helm chart's TorchServe container): the gate faces clients on 8080 and
# supervises TorchServe, whose own inference API (8085) and management API stay on loopback:
#   technogan gate --listen 0.0.0.0:8080 --upstream http://127.0.0.1:8085 --max-request-bytes 33554432 -- \
#     torchserve --start --foreground --ncs --disable-token-auth --ts-config config.properties \
#       --model-store /model-store --models technogan=technogan.mar
# with serving/config.properties as config.properties; 8082: Prometheus metrics.
EXPOSE 8080 8082
ENTRYPOINT ["technogan"]
CMD ["--help"]
