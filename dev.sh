#!/usr/bin/env bash
# The two front-door commands. Each does all of its own set-up on a fresh Debian machine (root):
#   ./dev.sh demo   - run the demo on the virtual rig (no hardware needed)
#   ./dev.sh test   - run the whole test suite (rig tests and the QEMU conformance peer)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${AWGW_VENV:-.venv}"
APT_PACKAGES=(dbus qemu-system-arm mosquitto systemd)

ensure_apt() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "installing ${missing[*]} (apt)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating the virtualenv $VENV" >&2
    python3 -m venv "$VENV"
  fi
  # pip runs again only when pyproject.toml changed since the last install it did.
  local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
  [[ -e "$stamp" ]] && return 0
  # pip's and setuptools' chatter goes to a log, shown only when the install fails.
  local log="$VENV/install.log"
  echo "installing the gateway and its test tools into $VENV (pip, about a minute the first" \
       "time; log: $log)" >&2
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -e ".[dev]"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "installing the virtualenv failed (log: $log)" >&2
    return 1
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
}

# A real Home Assistant judges our MQTT discovery (tests/rig/test_home_assistant.py):
# 2025.4.x runs on Python 3.13, in its own virtualenv, cached between runs.
HA_VERSION=2025.4.4
HA_FRONTEND=20250411.0
HA_PAHO=2.1.0
ensure_home_assistant() {
  local venv="${AWGW_HA_VENV:-$HOME/.cache/autowatering-gateway/ha-$HA_VERSION}"
  if [[ ! -x "$venv/bin/hass" ]]; then
    # The first Python 3.13 that runs: a pyenv shim is on PATH even where 3.13 is not the
    # selected version, and then fails.
    local py="" candidate
    for candidate in "$(command -v python3.13 || true)" "$HOME"/.pyenv/versions/3.13*/bin/python; do
      if [[ -x "$candidate" ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
        py="$candidate"
        break
      fi
    done
    if [[ -z "$py" ]]; then
      echo "Home Assistant $HA_VERSION needs Python 3.13, which this machine lacks" >&2
      return 1
    fi
    echo "installing Home Assistant $HA_VERSION into $venv (once)" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install -q "homeassistant==$HA_VERSION" \
      "home-assistant-frontend==$HA_FRONTEND" "paho-mqtt==$HA_PAHO"
  fi
  export AWGW_HA_VENV="$venv"
}

ensure_fixtures() {
  # The QEMU conformance peer: sha-pinned artifacts from the smpclient sdist on PyPI.
  "$VENV/bin/python" -c "from gateway.sim.qemu_peer import fetch_artifacts; fetch_artifacts()"
}

case "${1:-}" in
  demo)
    shift
    ensure_apt
    ensure_venv
    exec "$VENV/bin/awgw" demo "$@"
    ;;
  test)
    shift
    ensure_apt
    ensure_venv
    ensure_fixtures
    ensure_home_assistant
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  lint)
    ensure_venv
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy"
    ;;
  *)
    echo "usage: $0 demo [--duration S] [--json] | test [pytest args] | lint" >&2
    exit 2
    ;;
esac
