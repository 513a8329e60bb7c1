"""engine/serve."""
