"""Host networking drivers: bridges, VXLAN, DHCP, port forwards and security groups."""
