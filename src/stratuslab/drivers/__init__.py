"""Node-side drivers: compute (libvirt, fake), storage, network."""
