#!/usr/bin/env bash
# Install, upgrade or remove the AutoWatering gateway on Raspberry Pi OS (Debian, systemd).
#
#   sudo systemd/install.sh install     # user, venv, unit, config example, credentials; starts
#   sudo systemd/install.sh upgrade     # new code into the venv, keeps config and state; restarts
#   sudo systemd/install.sh uninstall   # stops and removes code and unit; keeps config and state
#   sudo systemd/install.sh uninstall --purge   # ... and /etc/awgw, /var/lib/awgw, the user
#
# Every step checks before it acts, so running install again repairs rather than duplicates.
# For tests and packaging: AWGW_ROOT puts every path under a directory, and AWGW_SKIP lists
# steps to leave out (comma-separated: apt, users, venv, systemctl).
set -euo pipefail

SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="${AWGW_ROOT:-}"
SKIP=",${AWGW_SKIP:-},"
PREFIX="/opt/autowatering-gateway"
USER_NAME="awgw"
GROUP_NAME="awgw"          # the control socket's group: who may run awgw against the daemon
BLUEZ_GROUP="bluetooth"    # BlueZ's D-Bus policy admits this group
APT_PACKAGES=(bluez python3-venv python3-pip rfkill)

OPT="$ROOT$PREFIX"
ETC="$ROOT/etc/awgw"
CREDENTIALS="$ETC/credentials"
STATE="$ROOT/var/lib/awgw"
UNIT="$ROOT/etc/systemd/system/awgw.service"
BIN="$ROOT/usr/local/bin/awgw"

say() { printf 'awgw install: %s\n' "$*" >&2; }
skipped() { [[ "$SKIP" == *",$1,"* ]]; }
die() { say "error: $*"; exit 1; }

need_root() {
  if [[ -z "$ROOT" && "$(id -u)" != 0 ]]; then
    die "run as root (sudo $0 $*)"
  fi
}

ensure_packages() {
  skipped apt && return 0
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

ensure_user() {
  skipped users && return 0
  getent group "$GROUP_NAME" >/dev/null || groupadd --system "$GROUP_NAME"
  getent group "$BLUEZ_GROUP" >/dev/null || groupadd --system "$BLUEZ_GROUP"
  if ! id -u "$USER_NAME" >/dev/null 2>&1; then
    say "creating system user $USER_NAME (group $GROUP_NAME, also in $BLUEZ_GROUP)"
    useradd --system --gid "$GROUP_NAME" --groups "$BLUEZ_GROUP" --home-dir /var/lib/awgw \
      --no-create-home \
      --shell /usr/sbin/nologin --comment "AutoWatering gateway" "$USER_NAME"
  else  # an earlier install made the user with the bluetooth group as its own
    usermod --gid "$GROUP_NAME" --append --groups "$BLUEZ_GROUP" "$USER_NAME"
  fi
}

owner() {  # chown unless users are skipped (a test root has no awgw user)
  skipped users || chown "$@"
}

copy_code() {
  say "copying the gateway to $OPT"
  mkdir -p "$OPT"
  # The code only: no virtualenv, git data or caches from the source tree.
  tar -C "$SOURCE" --exclude=./.venv --exclude=./.git --exclude='*.egg-info' \
    --exclude='__pycache__' --exclude=./.mypy_cache --exclude=./.ruff_cache \
    --exclude=./.pytest_cache --exclude=./.hypothesis -cf - . | tar -C "$OPT" -xf -
}

ensure_venv() {
  if skipped venv; then
    # A test root links an existing awgw instead of building a virtualenv.
    mkdir -p "$OPT/.venv/bin"
    ln -sfn "${AWGW_TEST_BIN:?AWGW_TEST_BIN names the awgw to link}" "$OPT/.venv/bin/awgw"
    return 0
  fi
  [[ -x "$OPT/.venv/bin/python" ]] || python3 -m venv "$OPT/.venv"
  "$OPT/.venv/bin/python" -m pip install -q --upgrade pip
  "$OPT/.venv/bin/python" -m pip install -q "$OPT"
}

ensure_files() {
  mkdir -p "$(dirname "$BIN")" "$(dirname "$UNIT")" "$ETC" "$CREDENTIALS" "$STATE"
  ln -sfn "$PREFIX/.venv/bin/awgw" "$BIN"
  install -m 0644 "$SOURCE/systemd/awgw.service" "$UNIT"
  if [[ ! -e "$ETC/config.toml" ]]; then
    install -m 0640 "$SOURCE/systemd/config.example.toml" "$ETC/config.toml"
    say "wrote $ETC/config.toml (every key optional; edit it, then: systemctl restart awgw)"
  fi
  chmod 0750 "$ETC"
  owner "root:$GROUP_NAME" "$ETC" "$ETC/config.toml"
  # LoadCredential= fails on a missing file: the credentials exist, empty until given.
  chmod 0700 "$CREDENTIALS"
  for name in refresh-token mqtt-password; do
    [[ -e "$CREDENTIALS/$name" ]] || install -m 0600 /dev/null "$CREDENTIALS/$name"
    chmod 0600 "$CREDENTIALS/$name"
  done
  # ESPHome proxies' keys, one file per proxy name (the directory exists, empty until given).
  install -d -m 0700 "$CREDENTIALS/esphome"
  owner -R root:root "$CREDENTIALS"
  chmod 0700 "$STATE"
  owner -R "$USER_NAME:$GROUP_NAME" "$STATE"
}

systemctl_do() {
  skipped systemctl && return 0
  systemctl "$@"
}

install_all() {
  need_root install
  ensure_packages
  ensure_user
  copy_code
  ensure_venv
  ensure_files
  systemctl_do daemon-reload
  systemctl_do enable --now awgw.service
  say "installed; check it with: awgw status, awgw doctor, journalctl -u awgw"
}

upgrade() {
  need_root upgrade
  [[ -d "$OPT" ]] || die "not installed (run: $0 install)"
  copy_code
  ensure_venv
  ensure_files
  systemctl_do daemon-reload
  systemctl_do restart awgw.service
  say "upgraded; config and state kept"
}

uninstall() {
  need_root uninstall
  systemctl_do disable --now awgw.service || true
  rm -f "$UNIT" "$BIN"
  rm -rf "$OPT"
  systemctl_do daemon-reload
  if [[ "${1:-}" == "--purge" ]]; then
    rm -rf "$ETC" "$STATE"
    if ! skipped users && id -u "$USER_NAME" >/dev/null 2>&1; then
      userdel "$USER_NAME"
    fi
    say "removed, with config, state and the $USER_NAME user"
  else
    say "removed; kept $ETC and $STATE (uninstall --purge removes them)"
  fi
}

case "${1:-}" in
  install) install_all ;;
  upgrade) upgrade ;;
  uninstall) shift; uninstall "${1:-}" ;;
  *) echo "usage: $0 install | upgrade | uninstall [--purge]" >&2; exit 2 ;;
esac
