"""The daemon wing: everything that exists only while `awgw daemon` runs."""
