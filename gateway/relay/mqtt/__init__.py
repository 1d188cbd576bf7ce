"""The MQTT relay and Home Assistant: the connection and publishing (``relay``), the topics,
the discovery payloads, the commands parsed without I/O, the update entity's offers and the
broker's password."""
