"""The configuration's defaults are what the documents say they are."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import GatewayConfig, MqttConfig

ROOT = Path(__file__).resolve().parents[2]


def test_mqtt_allowed_ops_default_to_what_the_readme_and_the_example_say() -> None:
    # hostile-edges M5: the code allowed update_install by default while both documents said
    # the four reading and watering ops.
    readme = (ROOT / "README.md").read_text()
    said = re.search(r"`allowed_ops` \(default ((?:`\w+`(?:, )?)+)[;)]", readme)
    assert said is not None
    documented = tuple(re.findall(r"`(\w+)`", said.group(1)))
    example = (ROOT / "systemd" / "config.example.toml").read_text()
    line = next(raw for raw in example.splitlines() if raw.startswith("# allowed_ops"))
    assert tomllib.loads(line.removeprefix("# "))["allowed_ops"] == list(documented)
    assert MqttConfig().allowed_ops == documented


def test_adapters_and_proxies_are_radios_of_one_gateway() -> None:
    config = GatewayConfig.model_validate({
        "link": {"adapters": [{"name": "hci1", "slots": 2}, {"name": "hci0"}]},
        "radios": {"esphome": [{"name": "garden", "host": "192.168.1.40"}]}})
    assert [(a.name, a.slots) for a in config.link.local_adapters] == [("hci1", 2), ("hci0", 3)]
    # Pairing and bonds live on the first adapter.
    assert (config.link.adapter, config.link.max_links) == ("hci1", 2)
    assert config.radios.esphome[0].port == 6053
    # The one-adapter shorthand still means one adapter.
    assert GatewayConfig().link.local_adapters[0].name == "hci0"


@pytest.mark.parametrize(("raw", "says"), [
    ({"link": {"adapters": [{"name": "hci1"}], "adapter": "hci0"}}, "not both"),
    ({"link": {"adapters": [{"name": "hci1"}, {"name": "hci1"}]}}, "listed twice"),
    ({"link": {"adapters": [{"name": "wlan0"}]}}, "pattern"),
    ({"link": {"adapters": [{"name": "hci0", "slots": 0}]}}, "greater than or equal to 1"),
    ({"link": {"adapters": [{"name": "hci0", "slots": 99}]}}, "less than or equal to 10"),
    ({"radios": {"esphome": [{"name": "hci0", "host": "x"}]}}, "share a name"),
    ({"radios": {"esphome": [{"name": "a", "host": "x"}, {"name": "a", "host": "y"}]}},
     "share a name"),
    ({"radios": {"esphome": [{"name": "a", "host": "x", "noise_psk": "abc"}]}},
     "never goes in the config"),
    ({"radios": {"esphome": [{"name": "a", "host": "x", "key_file": "key"}]}}, "absolute"),
    ({"radios": {"esphome": [{"name": "A b", "host": "x"}]}}, "pattern"),
    ({"radios": {"esphome": [{"name": "a", "host": "x; rm -rf /"}]}}, "pattern"),
    ({"radios": {"esphome": [{"name": "a", "host": "x", "port": 0}]}}, "greater than"),
])
def test_impossible_radio_configurations_are_refused_with_a_reason(
        raw: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        GatewayConfig.model_validate(raw)
