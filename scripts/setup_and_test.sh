#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite. This is the README's test command and all that .ci/run
# runs:  bash scripts/setup_and_test.sh  [extra pytest arguments]
#   1. from Debian, what is not there yet, with apt-get as root (through sudo otherwise):
#      - Fashion-MNIST (dataset-fashion-mnist), unless its folder is there (or VISION_AR_FASHION_MNIST points
#        at a copy);
#      - the chromium browser, unless /usr/bin/chromium (or VISION_AR_CHROMIUM) exists: the editing demo's page
#        is tested in it, headless (Playwright drives this system browser; it never downloads one);
#   2. the package and its test extras, editable (pytest, gradio, and Playwright's Python package only);
#   3. pytest over tests/.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${VISION_AR_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
browser="${VISION_AR_CHROMIUM:-/usr/bin/chromium}"

missing=()   # Debian packages to install
[ -d "$data" ] || missing+=(dataset-fashion-mnist)
if [ ! -x "$browser" ]; then
  if [ -n "${VISION_AR_CHROMIUM:-}" ]; then
    echo "VISION_AR_CHROMIUM=$browser is not an executable browser; point it at chromium, or unset it to use" \
         "Debian's /usr/bin/chromium (installed here when missing)." >&2
    exit 1
  fi
  missing+=(chromium)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  how="install Debian's ${missing[*]} package(s) (apt-get update && apt-get install -y ${missing[*]}) as root"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]} (Fashion-MNIST at $data, the browser at $browser), and apt-get is not" \
         "available: $how; or put the four Fashion-MNIST *-ubyte.gz files in a folder and set" \
         "VISION_AR_FASHION_MNIST to it, and point VISION_AR_CHROMIUM at a chromium binary." >&2
    exit 1
  fi
  if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
  elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
  else
    echo "missing: ${missing[*]}; installing needs root, and sudo is not available: $how." >&2
    exit 1
  fi
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

pip install -e ".[test]"
python -m pytest -q tests "$@"
