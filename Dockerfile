# One image for every technogan Job (synth, scrape, segment, train, evaluate, promote,
# package) and for TorchServe. CPU torch by default; for GPU nodes build with
#   --build-arg TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
FROM python:3.11-slim-bookworm

ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

# ffmpeg/ffprobe for decoding (pydub), Java 17 for TorchServe
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY serving ./serving
COPY tracking ./tracking
COPY configs ./configs
# hadolint ignore=DL3013
RUN pip install ${TORCH_SPEC} && pip install .

RUN useradd --create-home --uid 1000 technogan && mkdir -p /data && chown technogan /data
USER technogan
WORKDIR /data
ENTRYPOINT ["technogan"]
CMD ["--help"]
