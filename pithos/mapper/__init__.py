"""Maps: ordered (block hash, length) lists over the block store, stored as map pages."""

from pithos.mapper.mapper import DEFAULT_FANOUT, Mapper, MapStat, Piece

__all__ = ["DEFAULT_FANOUT", "MapStat", "Mapper", "Piece"]
