#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite. This is the README's test command and all that .ci/run
# runs:  bash scripts/setup_and_test.sh  [extra pytest arguments]
#   1. Fashion-MNIST from Debian's dataset-fashion-mnist package, unless its folder is already there (or
#      VISION_AR_FASHION_MNIST points at a copy): apt-get as root, through sudo otherwise;
#   2. the package and its test extras, editable;
#   3. pytest over tests/.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${VISION_AR_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
if [ ! -d "$data" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "Fashion-MNIST is missing ($data) and apt-get is not available: install Debian's dataset-fashion-mnist" \
         "package, or put the four *-ubyte.gz files in a folder and set VISION_AR_FASHION_MNIST to it." >&2
    exit 1
  fi
  if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
  elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
  else
    echo "Fashion-MNIST is missing ($data): installing dataset-fashion-mnist needs root, and sudo is not" \
         "available; run 'apt-get update && apt-get install -y dataset-fashion-mnist' as root." >&2
    exit 1
  fi
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist
fi

pip install -e ".[test]"
python -m pytest -q tests "$@"
