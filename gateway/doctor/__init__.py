"""`awgw doctor`."""
