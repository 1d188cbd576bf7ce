"""What the gateway keeps: the controller registry and the latest state of each controller."""
