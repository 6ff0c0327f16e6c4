#!/usr/bin/env bash
# The pure-Python wheels the engine needs beyond what the lent GPU machines hold (they fetch
# nothing): cattrs, tomli-w and beautilog for Python 3.12, into benchmarks/.wheels, which
# benchmarks/gpu.sh installs from when the device run carries it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip download --quiet --only-binary=:all: --python-version 3.12 --no-deps \
    -d benchmarks/.wheels cattrs tomli-w beautilog
ls benchmarks/.wheels
