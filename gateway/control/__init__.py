"""The control socket, both halves: the daemon's server and the CLI's client."""
