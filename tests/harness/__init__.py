"""The in-process daemon: the real composition root (gateway.daemon.main.build_hub) and its
Hub, with the radio faked behind the real interfaces (a scanner that sees nothing, controllers
served by the simulator's irrigation model, a BlueZ probe that answers). Tests talk to it
through its real control socket, in milliseconds instead of a subprocess on the rig."""
