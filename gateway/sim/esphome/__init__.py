"""A simulated ESPHome Bluetooth proxy for the rig (native API server, radio on the rig)."""
