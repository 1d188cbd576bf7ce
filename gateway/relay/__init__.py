"""Relays: the controllers' state, events and history on their way out of the house (the cloud
now, MQTT next), each fed by ``feed.StateFeed`` and buffered in the durable outbox."""
