"""A real Home Assistant for the tests: the pinned release in its own virtualenv
($AWGW_HA_VENV, installed by ./dev.sh test), started on loopback with a minimal configuration,
onboarded (an owner and a token), its MQTT integration set up through the config flow. The
tests read its states, its device registry (through template rendering) and its log, and call
its services: Home Assistant is the judge of our discovery payloads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from gateway.sim.broker import free_port
from gateway.sim.processes import terminate

# Home Assistant starts in a few seconds once installed; a loaded machine gets a minute.
START_LIMIT_S = 90.0
STOP_LIMIT_S = 20.0
CONFIG = """homeassistant:
  name: awgw-test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: DE
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
onboarding:
config:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
"""


def venv() -> Path | None:
    path = os.environ.get("AWGW_HA_VENV")
    return Path(path) if path and (Path(path) / "bin" / "hass").exists() else None


class HomeAssistant:
    def __init__(self, broker_port: int) -> None:
        found = venv()
        assert found is not None, "AWGW_HA_VENV is not set: run the tests with ./dev.sh test"
        self.hass = found / "bin" / "hass"
        self.broker_port = broker_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="awgw-ha-")
        self.config_dir = Path(self._dir.name)
        (self.config_dir / "configuration.yaml").write_text(CONFIG.format(port=self.port))
        self.log = self.config_dir / "home-assistant.log"
        self._proc: asyncio.subprocess.Process | None = None
        self.http = httpx.AsyncClient(base_url=self.url, timeout=30)
        self.token = ""

    async def __aenter__(self) -> HomeAssistant:
        # --skip-pip: everything it needs is installed; nothing is fetched during the tests.
        self._proc = await asyncio.create_subprocess_exec(
            str(self.hass), "-c", str(self.config_dir), "--skip-pip",
            "--log-file", str(self.log), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(START_LIMIT_S):
            while True:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"hass exited: {self.log.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await self.http.get("/api/onboarding")).status_code == 200:
                        break
                await asyncio.sleep(0.5)
        await self._onboard()
        await self._set_up_mqtt()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.http.aclose()
        if self._proc is not None:
            await terminate(self._proc, STOP_LIMIT_S)
        self._dir.cleanup()

    async def _onboard(self) -> None:
        client_id = f"{self.url}/"
        user = await self.http.post("/api/onboarding/users", json={
            "client_id": client_id, "name": "Test", "username": "test",
            "password": "awgw-test-password", "language": "en"})
        user.raise_for_status()
        token = await self.http.post("/auth/token", data={
            "grant_type": "authorization_code", "code": user.json()["auth_code"],
            "client_id": client_id})
        token.raise_for_status()
        self.token = token.json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    async def _set_up_mqtt(self) -> None:
        flow = await self.http.post("/api/config/config_entries/flow",
                                    json={"handler": "mqtt", "show_advanced_options": False})
        flow.raise_for_status()
        done = await self.http.post(f"/api/config/config_entries/flow/{flow.json()['flow_id']}",
                                    json={"broker": "127.0.0.1", "port": self.broker_port})
        done.raise_for_status()
        assert done.json()["type"] == "create_entry", done.text

    async def states(self) -> dict[str, dict[str, Any]]:
        answer = await self.http.get("/api/states")
        answer.raise_for_status()
        return {s["entity_id"]: s for s in answer.json()}

    async def state(self, entity_id: str) -> dict[str, Any] | None:
        answer = await self.http.get(f"/api/states/{entity_id}")
        return answer.json() if answer.status_code == 200 else None

    async def template(self, template: str) -> str:
        answer = await self.http.post("/api/template", json={"template": template})
        answer.raise_for_status()
        return answer.text

    async def call(self, domain: str, service: str, **data: Any) -> None:
        answer = await self.http.post(f"/api/services/{domain}/{service}", json=data)
        answer.raise_for_status()

    def problems(self) -> list[str]:
        """Every warning or error the MQTT integration and the entity platforms logged."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [line for line in lines if re.search(r"(WARNING|ERROR)", line)
                and re.search(r"(mqtt|sensor|valve|update|number|event|button|template)", line)]
