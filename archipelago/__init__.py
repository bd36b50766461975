"""Archipelago: thin volumes, snapshots and clones over the block store, served over NBD.

    from archipelago import Volumes
    vols = Volumes.local("./data")          # blocks in data/blocks, volumes in data/volumes
    vols.create("disk", 10 << 30)
    with contextlib.closing(vols.open("disk")) as vol:
        vol.write(0, b"...")
        vol.flush()
    vols.snapshot("disk", "disk@1")
    vols.clone("disk@1", "disk2")

`archipelago.roots.named_roots(data_dir)` (or `Volumes.gc_roots()`) lists every map root
volumes and snapshots reference, for the garbage collector.  docs/volumes.md describes the design.
"""

from archipelago.heads import Head, LeaseLost
from archipelago.volume import Volume
from archipelago.volumes import Volumes, gc_roots, root_heads

__all__ = ["Head", "LeaseLost", "Volume", "Volumes", "gc_roots", "root_heads"]
