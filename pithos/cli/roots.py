"""The registry of map roots kept outside the catalog: every part that keeps maps of its own
registers its provider here, at the entry point (the composition root), and nowhere else.
Leaving a part out would let `pithos gc` sweep its maps."""

from __future__ import annotations

from archipelago.roots import named_roots as volume_roots
from pithos.cli.datadir import DataDir
from pithos.mapper.roots import NamedRoot, RootProvider

PROVIDERS: list[RootProvider] = [
    volume_roots,  # volumes and snapshots (archipelago)
]


def provided_roots(data: DataDir) -> list[NamedRoot]:
    """Every root the registered providers keep for this data directory."""
    return [named for provider in PROVIDERS for named in provider(data.path, data.storage.blocks)]
