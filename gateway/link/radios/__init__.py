"""The gateway's radios: its own adapters and ESPHome Bluetooth proxies, each with a scanner
and slots, and the set that routes each connect through one of them (``paths.choose``)."""
