"""systemd/install.sh into a directory standing in for the Pi's root: install lays out the
code, the unit, `awgw` on PATH, the config example and the empty credentials with their
modes; a second install changes nothing and keeps an edited config; upgrade keeps config and
state; uninstall removes the code and keeps config and state, --purge removes those too."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "systemd" / "install.sh"


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWGW_ROOT": str(root), "AWGW_SKIP": "apt,users,venv,systemctl",
           "AWGW_TEST_BIN": str(Path(sys.executable).with_name("awgw"))}
    result = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): mode(p) for p in sorted(root.rglob("*"))
            if not p.is_symlink()}


def test_install_is_idempotent_and_upgrade_and_uninstall_keep_what_they_should(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    run(root, "install")
    opt = root / "opt/autowatering-gateway"
    assert (opt / "gateway/daemon/main.py").is_file() and not (opt / ".git").exists()
    assert (root / "etc/systemd/system/awgw.service").read_text() == (
        SCRIPT.parent / "awgw.service").read_text()
    assert os.readlink(root / "usr/local/bin/awgw") == "/opt/autowatering-gateway/.venv/bin/awgw"
    config = root / "etc/awgw/config.toml"
    assert mode(config) == 0o640 and mode(root / "etc/awgw") == 0o750
    for name in ("refresh-token", "mqtt-password"):
        credential = root / "etc/awgw/credentials" / name
        assert credential.read_bytes() == b"" and mode(credential) == 0o600
    assert mode(root / "etc/awgw/credentials") == 0o700
    assert mode(root / "var/lib/awgw") == 0o700

    config.write_text('log_level = "debug"\n')  # the homeowner's edit
    (root / "var/lib/awgw/registry.sqlite3").write_bytes(b"state")
    before = tree(root)
    second = run(root, "install")
    assert tree(root) == before and "wrote" not in second.stderr
    assert config.read_text() == 'log_level = "debug"\n'

    run(root, "upgrade")
    assert config.read_text() == 'log_level = "debug"\n'
    assert (root / "var/lib/awgw/registry.sqlite3").read_bytes() == b"state"

    run(root, "uninstall")
    assert not opt.exists() and not (root / "usr/local/bin/awgw").is_symlink()
    assert not (root / "etc/systemd/system/awgw.service").exists()
    assert config.exists() and (root / "var/lib/awgw/registry.sqlite3").exists()
    run(root, "uninstall", "--purge")
    assert not (root / "etc/awgw").exists() and not (root / "var/lib/awgw").exists()


def test_install_refuses_without_root_when_no_root_dir_is_given() -> None:
    # The script on stdin: a checkout under a root-only directory is unreadable to nobody.
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] \
        if os.getuid() == 0 else []
    env = {k: v for k, v in os.environ.items() if k not in ("AWGW_ROOT", "AWGW_SKIP")}
    result = subprocess.run([*drop, "bash", "-s", "install"], input=SCRIPT.read_text(),
                            env=env, capture_output=True, text=True, timeout=60, check=False,
                            cwd="/")
    assert result.returncode == 1 and "run as root" in result.stderr
