#!/usr/bin/env bash
# One-command set-up for a fresh Debian/Ubuntu machine, then the main job or the tests.
#   bash scripts/quickstart.sh demo   # set up, fetch Fashion-MNIST, run `edgecomp run` on it
#   bash scripts/quickstart.sh test   # set up, run the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-demo}"
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
FMNIST_DIR=/usr/share/datasets/fashion-mnist

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
apt_ok() { command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; }
apt_updated=0
apt_install() {
  apt_ok || return 1
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@"
}

# 1. Python with venv support.
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  apt_install python3 python3-venv python3-pip || { echo "quickstart: python3 with the venv module is missing; install python3-venv and retry" >&2; exit 2; }
fi

# 2. The virtual environment with the pinned packages (re-installed when pyproject.toml changes).
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
stamp="$VENV/.edgecomp-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  touch "$stamp"
fi

# 3. Real Fashion-MNIST (the main job trains on it, and the CLI tests read it): Debian's package
#    when apt is usable, else Keras's downloader (inside edgecomp).
if [ "$what" != setup ] && [ -z "${EDGECOMP_DATA:-}" ] && [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  apt_install dataset-fashion-mnist || echo "quickstart: apt not usable; edgecomp will try Keras's downloader" >&2
fi

case "$what" in
  demo)
    shift || true
    exec "$VENV/bin/edgecomp" run "$@"
    ;;
  test)
    # 4. The emulated arm64 target's tool (tests/test_arm64.py builds its cache, ~15 s; they are
    #    skipped where mmdebstrap can't be had, and fail where EDGECOMP_REQUIRE_ARM64=1, as in CI).
    if ! command -v mmdebstrap >/dev/null; then
      apt_install mmdebstrap || echo "quickstart: apt not usable; the arm64 emulation tests will be skipped" >&2
    fi
    shift || true
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  setup) ;;
  *) echo "quickstart: unknown target '$what'; use demo, test or setup" >&2; exit 2 ;;
esac
