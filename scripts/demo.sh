#!/usr/bin/env bash
# Set up .venv if needed, then run the demo: `medadv demo` (default output folder: demo_out/).
# Extra arguments go to `medadv demo`, e.g. --out DIR, --dataset_dir /data/BraTS2021, --redo.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/medadv demo "$@"
