"""The doctor's questions to a real broker (mosquitto started here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.config import GatewayConfig, MqttConfig
from gateway.doctor.host import SystemHost
from gateway.relay.mqtt import identity
from gateway.relay.mqtt.relay import MqttRelay
from gateway.relay.mqtt.topics import ONLINE
from gateway.sim.broker import MosquittoBroker
from gateway.store.outbox import Outbox
from tests.gateway.relay.mqtt.test_relay import ARRIVES_WITHIN_S, FakeOps
from tests.helpers import until


async def test_the_doctor_reads_what_a_running_hub_announced(tmp_path: Path) -> None:
    async with MosquittoBroker() as broker:
        mqtt = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port)
        elsewhere = identity.Instance(token="cd" * 16, host="shed-pi",
                                      machine="0123456789abcdef", pid=4242)
        relay = MqttRelay(mqtt, "gw1", Outbox(tmp_path / "a.db", "gw1"), FakeOps(),
                          instance=elsewhere)
        host = SystemHost(GatewayConfig(state_dir=tmp_path / "state", mqtt=mqtt))
        topics = [relay.topics.gateway_instance, relay.topics.gateway_availability]
        async with asyncio.TaskGroup() as tasks:
            run = tasks.create_task(relay.run())
            await until(lambda: relay.connected, ARRIVES_WITHIN_S)
            # Connected comes before the retained announcements land at the broker (a hog
            # run read only the instance): read until both are held.
            deadline = asyncio.get_running_loop().time() + ARRIVES_WITHIN_S
            held = await host.mqtt_retained(mqtt, None, topics)
            while (isinstance(held, dict) and len(held) < len(topics)
                   and asyncio.get_running_loop().time() < deadline):
                await asyncio.sleep(0.1)
                held = await host.mqtt_retained(mqtt, None, topics)
            run.cancel()
        assert isinstance(held, dict)
        assert identity.parse(held[relay.topics.gateway_instance]) == elsewhere
        assert held[relay.topics.gateway_availability] == ONLINE.encode()
        # Nothing retained for another id: an empty answer, within the bounded wait.
        assert await host.mqtt_retained(mqtt, None, ["autowatering/gateway/x/instance"]) == {}
    # No broker: a reason, never an exception.
    assert isinstance(await host.mqtt_retained(mqtt, None, topics), str)
