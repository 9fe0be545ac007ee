#!/usr/bin/env bash
# Build the image that the manifests of k8s/ name, and with --push push it.
#   jobs/build_image.sh [--push]
#   IMAGE=registry.example.com/team/ssagan-dist:0.1.0 jobs/build_image.sh --push
# The image pins what the project's tested environment (.venv, `make setup`) has: every
# dependency version goes in as a pip constraint (build/image-constraints.txt), torch as a CUDA
# 12.8 build of the same version. The manifests are checked first, and the image name must be
# the one they use (change both together: sed -i 's#OLD#NEW#' k8s/*.yaml k8s/*/*.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
image=${IMAGE:-ghcr.io/ssagan-dist/ssagan-dist:$version}
if ! grep -rqF "image: $image" k8s/; then
  echo "k8s/ does not name the image $image: change the manifests or IMAGE so that they agree" >&2
  exit 2
fi
"$python" -m ssagan_dist.deploy.check k8s/

mkdir -p build
# torch and its CUDA libraries come from the CUDA 12.8 index in the Dockerfile, not from here.
"$python" -m pip freeze --exclude-editable \
  | grep -viE '^((torch|triton|ssagan[-_]dist)(==| @)|nvidia-|cuda-)' > build/image-constraints.txt
torch_version=$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')

docker build --build-arg "TORCH_VERSION=$torch_version" -t "$image" .
echo "[image] built $image (torch $torch_version+cu128, $(wc -l < build/image-constraints.txt) pinned dependencies)"
if [ "${1:-}" = "--push" ]; then
  docker push "$image"
  echo "[image] pushed $image"
fi
