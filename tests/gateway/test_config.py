"""The configuration's defaults are what the documents say they are."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from gateway.config import MqttConfig

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
