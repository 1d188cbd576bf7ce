"""Operations every caller speaks: typed requests and results, answered directly on the radio
or through the daemon."""
