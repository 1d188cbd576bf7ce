"""The broker's TLS context, built at start-up with the configuration: a missing or unreadable
``mqtt.ca_file`` is a configuration error (exit 7 naming the key) before anything starts, not
a crash of the MQTT relay after READY."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from gateway.config import MqttConfig
from gateway.errors import ConfigError


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    cafile = str(config.ca_file) if config.ca_file is not None else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except FileNotFoundError as exc:
        raise ConfigError(f"mqtt.ca_file: {cafile} does not exist") from exc
    except ssl.SSLError as exc:
        raise ConfigError(f"mqtt.ca_file: {cafile} holds no PEM certificate ({exc.reason})") \
            from exc
    except OSError as exc:
        raise ConfigError(f"mqtt.ca_file: cannot read {cafile}: {exc.strerror}") from exc


@dataclass(frozen=True)
class Exposure:
    problem: str
    remedy: str


def open_broker(config: MqttConfig) -> Exposure | None:
    """Why anyone on the network may open this hub's valves through the broker, or read its
    broker password, or None: a password sent without TLS (hostile-edges L7), or a broker
    without TLS and without credentials with a valve op allowed (M5)."""
    if not config.enabled or config.tls:
        return None
    if config.username:
        return Exposure(f"the broker {config.host}:{config.port} is reached without TLS: the "
                        f"password of {config.username} crosses the network in clear",
                        "turn TLS on ([mqtt] tls = true, the broker's CA in ca_file)")
    valves = [op for op in config.allowed_ops if op in ("valve_open", "valve_close")]
    if not valves:
        return None
    return Exposure(f"the broker {config.host}:{config.port} has neither TLS nor a username, "
                    f"and [mqtt] allowed_ops has {', '.join(valves)}: anyone who can reach the "
                    "broker can water",
                    "give the broker a username and password (and TLS), or remove valve_open "
                    "and valve_close from [mqtt] allowed_ops")
