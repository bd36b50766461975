"""The content-addressed block store: BlockStore backends and the Blocker that guards them."""

from pithos.blocker.blocker import DEFAULT_BLOCK_SIZE, Blocker
from pithos.blocker.local import LocalBlockStore
from pithos.blocker.memory import MemoryBlockStore
from pithos.blocker.store import BlockStore

__all__ = ["DEFAULT_BLOCK_SIZE", "BlockStore", "Blocker", "LocalBlockStore", "MemoryBlockStore"]
