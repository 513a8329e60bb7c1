"""p2es/transport."""
