#!/usr/bin/env bash
# Installs what gradwatch needs on a fresh machine into .venv (idempotent).
#   scripts/setup.sh          the package, its runtime dependencies and the demo extra
#   scripts/setup.sh test     plus test tools and, as root, Debian's Prometheus binaries
#                             and Chromium (renders the HTML report in the tests)
#   scripts/setup.sh bench    the same (wandb, the benchmark's side-by-side row, is in the test extra too)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch is pinned by constraints.txt (a CPU wheel); pyproject keeps a range for users
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# the demo extra (rich) lives in this .venv only: a base install never brings it
extra="[demo]"
case "${1:-}" in
  test) extra="[demo,test]" ;;
  bench) extra="[demo,test,bench]" ;;
esac
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".${extra}"
if [ "${1:-}" = "test" ] || [ "${1:-}" = "bench" ]; then
  need=()
  command -v promtool >/dev/null || need+=(prometheus)
  [ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)
  [ -x /usr/bin/prometheus-pushgateway ] || need+=(prometheus-pushgateway)
  command -v chromium >/dev/null || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "setup: not root, cannot install ${need[*]}; tests that need them will say so" >&2
    fi
  fi
fi
