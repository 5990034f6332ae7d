#!/usr/bin/env bash
# Create .venv inside the repo and install medadv-monai into it. Idempotent: does nothing when pyproject.toml is
# unchanged since the last install. On a machine without an NVIDIA GPU it installs the CPU build of torch
# (torch==2.13.0) so no CUDA wheels are downloaded; a torch already in .venv (e.g. a CUDA build a GPU user
# installed first) is kept. MEDADV_TORCH overrides the torch requirement, e.g. MEDADV_TORCH="torch==2.13.0".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  echo "[bootstrap] creating $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
stamp="$venv/.medadv-installed"
want=$(cat "$root/pyproject.toml" "$0" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  exit 0
fi
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }
if ! "$py" -c "import torch" 2>/dev/null; then
  if [ -n "${MEDADV_TORCH:-}" ]; then
    spec=$MEDADV_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec="torch"            # a GPU machine: the default build, with CUDA
  else
    spec="torch==2.13.0"    # CPU only: the CPU build, no CUDA wheels
  fi
  echo "[bootstrap] installing $spec"
  pip install "$spec"
fi
# Keep the torch we have: constrain it so no dependency can pull another build.
constraints="$venv/constraints.txt"
"$py" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraints"
echo "[bootstrap] installing medadv-monai (editable) with $(cat "$constraints")"
pip install -c "$constraints" -e "$root[test]"
# torchattacks, a test-only reference for cross-checks: without its dependencies (its requests~=2.25.1 pin conflicts
# with nilearn's requests>=2.33; attacking needs only torch, numpy and scipy, installed above)
pip install --no-deps "torchattacks==3.5.1"
echo "$want" > "$stamp"
