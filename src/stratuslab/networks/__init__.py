"""Virtual networks: address management and guest network configuration (pure code)."""
