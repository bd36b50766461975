"""Archipelago: thin volumes, snapshots and clones over the block store, served over NBD."""
