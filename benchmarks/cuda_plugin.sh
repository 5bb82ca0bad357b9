#!/usr/bin/env bash
# jax's CUDA plugin for deviceless GPU compiles (`python -m act_jax.aot --topology h100:1x1x8`),
# outside the project's venv: the two wheels of the installed jax's version are downloaded
# (`pip download --no-deps`) and unpacked into benchmarks/.cuda-plugin/site (git-ignored).
# Nothing else needs them; put the folder on PYTHONPATH for the aot run only:
#   benchmarks/cuda_plugin.sh [PYTHON]
#   PYTHONPATH=benchmarks/.cuda-plugin/site JAX_PLATFORMS=cpu python -m act_jax.aot ...
set -euo pipefail
python="${1:-python}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/benchmarks/.cuda-plugin"
version="$("$python" -c 'import jax; print(jax.__version__)')"
pyver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
mkdir -p "$dir/wheels" "$dir/site"
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
    -d "$dir/wheels" "jax-cuda12-plugin==$version" "jax-cuda12-pjrt==$version"
for whl in "$dir"/wheels/jax_cuda12_*-"$version"-*.whl; do
  "$python" -m zipfile -e "$whl" "$dir/site"
done
echo "PYTHONPATH=$dir/site"
