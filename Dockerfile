# The image every pod in k8s/ runs (ghcr.io/ssagan-dist/ssagan-dist:<version of pyproject.toml>):
# the official Ray image of exactly the Ray version pyproject.toml pins, CUDA 12.8, PyTorch built
# for CUDA 12.8, then this package with the dependency versions the test suite ran with.
# Build it with jobs/build_image.sh (it writes build/image-constraints.txt first):
#   jobs/build_image.sh            # build
#   jobs/build_image.sh --push     # build and push
FROM rayproject/ray:2.60.0-py311-cu128

# The torch build must match the image's CUDA (cu128 wheels need an NVIDIA driver >= 570).
ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# Pods run with a read-only root filesystem: caches go to /home/ray/.cache and /tmp, which the
# manifests mount as emptyDirs; no .pyc files are written next to the installed code.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_CACHE_HOME=/home/ray/.cache \
    TORCH_HOME=/home/ray/.cache/torch \
    TRITON_CACHE_DIR=/home/ray/.cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/home/ray/.cache/torchinductor \
    MPLCONFIGDIR=/tmp/matplotlib \
    RAY_USAGE_STATS_ENABLED=0

# The image's default user is `ray` (uid 1000, gid 100), owner of its Python environment.
USER 1000:100
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /home/ray/src
COPY --chown=1000:100 build/image-constraints.txt /home/ray/src/constraints.txt
COPY --chown=1000:100 pyproject.toml README.md /home/ray/src/
COPY --chown=1000:100 ssagan_dist /home/ray/src/ssagan_dist
COPY --chown=1000:100 data_tools /home/ray/src/data_tools
RUN pip install --constraint constraints.txt . \
    && python -c "import ray, torch, ssagan_dist.train, ssagan_dist.tune; assert ray.__version__ == '2.60.0', ray.__version__; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__" \
    && cd /home/ray && rm -rf /home/ray/src

WORKDIR /home/ray
