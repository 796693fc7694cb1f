"""The node agent: pulls desired state, converges libvirt to it, reports what is."""
