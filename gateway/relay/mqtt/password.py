"""The broker's password: from the systemd credential, else the file the config names; never
from the config itself."""

from __future__ import annotations

import os

from gateway.config import MqttConfig
from gateway.errors import ConfigError

CREDENTIAL_NAME = "awgw-mqtt-password"


def read_password(config: MqttConfig) -> str | None:
    """The systemd credential when it holds one, else ``mqtt.password_file``. The credential
    is optional (install.sh creates it empty); a password file the config names must exist:
    connecting without the password would only be refused by the broker, later and vaguer."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates = [(p, named) for p, named in (
        (os.path.join(directory, CREDENTIAL_NAME) if directory else None, False),
        (str(config.password_file) if config.password_file else None, True)) if p]
    for path, named in candidates:
        try:
            with open(path, encoding="utf-8") as file:
                password = file.read(4096).strip()
        except FileNotFoundError as exc:
            if named:
                raise ConfigError(f"mqtt.password_file: {path} does not exist (put the "
                                  "broker's password there, or remove the key)") from exc
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read the MQTT password from {path}: {exc.strerror}") \
                from exc
        if password:  # an empty file (install.sh's placeholder credential) gives none
            return password
    return None
