"""The demo's brokers: mosquitto, and the embedded amqtt where mosquitto is missing; both
carry what the MQTT relay relies on (QoS 1, retained messages, a last will)."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from gateway.sim.broker import EmbeddedBroker, MosquittoBroker


@pytest.mark.parametrize("kind", [MosquittoBroker, EmbeddedBroker])
async def test_retained_qos1_and_the_last_will(kind: type[MosquittoBroker | EmbeddedBroker]
                                              ) -> None:
    async with kind() as broker:
        will = aiomqtt.Will("gw/availability", b"offline", qos=1, retain=True)
        dying = aiomqtt.Client("127.0.0.1", broker.port, identifier="dying", will=will,
                               keepalive=1)
        await dying.__aenter__()
        await dying.publish("gw/state", b'{"ok": true}', qos=1, retain=True)
        # Drop the connection without a DISCONNECT: the broker publishes the will.
        dying._client._sock_close()
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="reader") as reader:
            await reader.subscribe("gw/#", qos=1)
            seen: dict[str, bytes] = {}
            async with asyncio.timeout(15):
                async for message in reader.messages:
                    assert isinstance(message.payload, bytes)
                    seen[str(message.topic)] = message.payload
                    if len(seen) == 2:
                        break
        assert seen == {"gw/state": b'{"ok": true}', "gw/availability": b"offline"}
