"""The sync state's local chunk index: where a download finds a chunk the folder holds (the
file, the offset and the length as last hashed), kept in step with the files cache as files
are hashed again or dropped, and rebuilt from the files cache for a state made when the
index kept whole rows."""

from __future__ import annotations

import dataclasses
import os
import random
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.sync.state import STATE_DIR, ChunkList, ChunkSource, LocalFile, State, pack_chunks
from pithos.sync.state import Chunk as C


def chunks_of(*specs: tuple[bytes, int]) -> ChunkList:
    return ChunkList(pack_chunks([C(h, n) for h, n in specs]))


def local(path: str, chunks: ChunkList, inode: int = 1) -> LocalFile:
    return LocalFile(path, sum(c.length for c in chunks), 1, inode, "0" * 32, chunks)


def h(tag: int, prefix: bytes = b"") -> bytes:
    """A 32-byte hash; with `prefix`, one whose first 8 bytes are those (a collision)."""
    body = random.Random(tag).randbytes(32)
    return (prefix + body)[:32] if prefix else body


def test_a_chunk_is_found_at_its_offset_in_each_file_that_holds_it(tmp_path):
    s = State(str(tmp_path))
    a, b, c = h(1), h(2), h(3)
    s.put_files([local("one", chunks_of((a, 100), (b, 200), (c, 300))),
                 local("dir/two", chunks_of((c, 300), (a, 100)))])
    assert set(s.chunk_sources(a)) == {ChunkSource("one", 0, 100),
                                       ChunkSource("dir/two", 300, 100)}
    assert s.chunk_sources(b) == [ChunkSource("one", 100, 200)]
    assert set(s.chunk_sources(c)) == {ChunkSource("one", 300, 300),
                                       ChunkSource("dir/two", 0, 300)}
    assert s.chunk_sources(h(4)) == []
    assert len(s.chunk_sources(a, limit=1)) == 1


def test_a_hash_sharing_the_first_8_bytes_of_a_held_one_is_not_found(tmp_path):
    s = State(str(tmp_path))
    held = h(1)
    other = h(2, prefix=held[:8])
    assert other != held and other[:8] == held[:8]
    s.put_files([local("f", chunks_of((held, 10)))])
    assert s.chunk_sources(other) == []
    assert s.chunk_sources(held) == [ChunkSource("f", 0, 10)]


def test_a_file_hashed_again_or_dropped_no_longer_offers_its_old_chunks(tmp_path):
    s = State(str(tmp_path))
    a, b, c = h(1), h(2), h(3)
    s.put_files([local("f", chunks_of((a, 10), (b, 20)))])
    assert s.chunk_sources(b) == [ChunkSource("f", 10, 20)]
    s.put_files([local("f", chunks_of((c, 5), (b, 20)), inode=2)])
    assert s.chunk_sources(a) == []
    assert s.chunk_sources(b) == [ChunkSource("f", 5, 20)]  # (not the kept offsets of before)
    s.drop_file("f")
    assert s.chunk_sources(b) == [] and s.chunk_sources(c) == []
    assert s.db.execute("SELECT count(*) FROM chunk_refs").fetchone() == (0,)


def test_a_path_put_twice_in_one_batch_offers_only_its_last_chunks(tmp_path):
    s = State(str(tmp_path))
    a, b = h(1), h(2)
    s.put_files([local("f", chunks_of((a, 10))), local("f", chunks_of((b, 20)), inode=2)])
    assert s.chunk_sources(a) == []
    assert s.chunk_sources(b) == [ChunkSource("f", 0, 20)]
    assert s.db.execute("SELECT count(*) FROM chunk_refs").fetchone() == (1,)


def test_a_state_made_with_the_old_chunk_index_is_upgraded_on_open(tmp_path):
    s = State(str(tmp_path))
    a, b = h(1), h(2)
    s.put_files([local("f", chunks_of((a, 10), (b, 20)))])
    s.close()
    db = sqlite3.connect(os.path.join(tmp_path, STATE_DIR, "state.sqlite"))
    db.executescript("""
        DROP TABLE chunk_refs;
        CREATE TABLE chunks (
            hash BLOB NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL,
            length INTEGER NOT NULL, PRIMARY KEY (hash, path, offset)) WITHOUT ROWID;
        CREATE INDEX chunks_by_path ON chunks (path);
    """)
    db.execute("INSERT INTO chunks VALUES (?, 'f', 0, 10)", (a,))
    db.commit()
    db.close()
    s = State(str(tmp_path))
    assert s.chunk_sources(b) == [ChunkSource("f", 10, 20)]
    assert s.chunk_sources(a) == [ChunkSource("f", 0, 10)]
    names = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master")}
    assert "chunks" not in names and "chunks_by_path" not in names
    s.close()
    assert State(str(tmp_path)).chunk_sources(b) == [ChunkSource("f", 10, 20)]


def test_a_files_cache_made_before_it_kept_change_times_is_upgraded_on_open(tmp_path):
    """Its rows get change time 0 (unknown: the next scan hashes them once more), and the
    cache keeps the ones it is given from then on."""
    s = State(str(tmp_path))
    s.close()
    db = sqlite3.connect(os.path.join(tmp_path, STATE_DIR, "state.sqlite"))
    db.executescript("""
        DROP TABLE files;
        CREATE TABLE files (
            path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL, md5 TEXT NOT NULL, chunks BLOB NOT NULL);
        INSERT INTO files VALUES ('old', 1, 2, 3, 'm', x'');
    """)
    db.commit()
    db.close()
    s = State(str(tmp_path))
    cached = s.cached_stat("old")
    assert cached is not None and (cached.size, cached.ctime_ns) == (1, 0)
    s.put_files([dataclasses.replace(local("new", chunks_of((h(1), 10))), ctime_ns=77)])
    assert s.cached_stat("new").ctime_ns == 77 and s.cached("new").ctime_ns == 77
    s.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c/d"]),
                          st.lists(st.tuples(st.integers(0, 7), st.integers(1, 50)),
                                   max_size=6),
                          st.booleans()),
                min_size=1, max_size=12))
def test_the_index_answers_as_the_files_cache_holds_them(tmp_path_factory, steps):
    """Puts and drops in any order: every chunk is offered exactly where a cached file holds
    it first, and nowhere else."""
    s = State(str(tmp_path_factory.mktemp("state")))
    hashes = [h(i) for i in range(8)]
    model: dict[str, list[tuple[bytes, int]]] = {}
    for path, spec, drop in steps:
        if drop:
            s.drop_file(path)
            model.pop(path, None)
        else:
            chunks = [(hashes[i], n) for i, n in spec]
            s.put_files([local(path, chunks_of(*chunks))])
            model[path] = chunks
        for x in hashes:
            want = set()
            for p, chunks in model.items():
                at = 0
                for hh, n in chunks:
                    if hh == x:
                        want.add(ChunkSource(p, at, n))
                        break
                    at += n
            assert set(s.chunk_sources(x, limit=10)) == want
    s.close()
