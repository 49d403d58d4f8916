#!/usr/bin/env bash
# mypy on gradwatch as it is installed: gradwatch.monitor and gradwatch.callbacks live in the
# repository's top-level folders monitor/ and callbacks/ (setuptools package-dir), a mapping
# mypy cannot follow, so it reads them through a tree of links shaped like the installed package.
# Errors name the repository's paths (monitor/x.py), not the links.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tree=build/typecheck
rm -rf "$tree" && mkdir -p "$tree/gradwatch"
ln -s "$root"/gradwatch/*.py "$root/gradwatch/py.typed" "$tree/gradwatch/"
ln -s "$root/monitor" "$tree/gradwatch/monitor"
ln -s "$root/callbacks" "$tree/gradwatch/callbacks"
cd "$tree"
"$root/.venv/bin/python" -m mypy --config-file "$root/pyproject.toml" \
    --cache-dir "$root/.mypy_cache" -p gradwatch "$@" \
  | sed -e 's#^gradwatch/monitor/#monitor/#' -e 's#^gradwatch/callbacks/#callbacks/#'
