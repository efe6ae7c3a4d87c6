#!/usr/bin/env bash
# Runs the whole test suite (unit, real ComfyUI server, real browser) from a fresh clone on a fresh
# machine: builds the dev environment (scripts/dev_env.sh), installs the browser tooling if absent
# (Debian `chromium`; `playwright-core` from npm into a cache outside git, never a downloaded
# browser), then runs pytest. Extra arguments go to pytest: scripts/test.sh tests/unit -k regions
set -euo pipefail

FACEX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=dev_env.sh
source "$FACEX_ROOT/scripts/dev_env.sh"
CACHE="${FACEX_CACHE:-$HOME/.cache/facex-dev}"
export FACEX_NODE_DIR="${FACEX_NODE_DIR:-$CACHE/node}"
export FACEX_VENV FACEX_COMFYUI
log() { echo "[facex-test] $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install_browser_tooling() {
  if ! command -v chromium >/dev/null 2>&1; then apt_install chromium; fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then apt_install nodejs npm; fi
  local node_major
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" -lt 20 ]; then
    log "node $(node --version) is too old for playwright-core (tests/e2e/package.json needs >= 20)"
    exit 1
  fi
  # playwright-core, pinned in tests/e2e/package.json; reinstalled when that file changes.
  mkdir -p "$FACEX_NODE_DIR"
  if ! cmp -s "$FACEX_ROOT/tests/e2e/package.json" "$FACEX_NODE_DIR/package.json" \
     || [ ! -f "$FACEX_NODE_DIR/node_modules/playwright-core/package.json" ]; then
    log "npm install playwright-core into $FACEX_NODE_DIR"
    cp "$FACEX_ROOT/tests/e2e/package.json" "$FACEX_NODE_DIR/package.json"
    (cd "$FACEX_NODE_DIR" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}

install_browser_tooling
cd "$FACEX_ROOT"
# Paths given (scripts/test.sh tests/unit/test_x.py -k y) replace the default `tests`.
targets=(tests)
for arg in "$@"; do
  case "$arg" in -*) ;; *) if [ -e "${arg%%::*}" ]; then targets=(); break; fi ;; esac
done
# -ra: say why anything did not pass. --timeout: per test, setup included (the first test that
# needs the server also pays for its start and for building the cached random models).
# Import mode and markers: tests/pytest.ini.
exec "$FACEX_VENV/bin/python" -m pytest "${targets[@]}" -ra --timeout="${FACEX_TEST_TIMEOUT:-900}" "$@"
