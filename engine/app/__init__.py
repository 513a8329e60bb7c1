"""engine/app."""
