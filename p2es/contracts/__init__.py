"""p2es/contracts."""
