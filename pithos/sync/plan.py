"""The three-way decision: per path, from B (the last state both sides agreed on), L (the
folder now) and R (the container now, as the change feed last told), what to do.  Pure: no
I/O, so the table below is tested directly.

Contents are compared by MD5 (the remote ETag; the local one is computed by the scan).

    L == R                  agree (record the base; nothing moves)
    L == B, R != B          the remote changed: download, or delete the local file (R gone)
    R == B, L != B          the folder changed: upload (If-Match R / If-None-Match *), or
                            delete the remote object (If-Match B)
    both changed, L != R:
      L gone                edit-vs-delete: the edit wins, download
      R gone                edit-vs-delete: the edit wins, upload (If-None-Match *)
      both present          conflict: the local file is renamed to a conflict copy (uploaded
                            as a new file on the next pass) and the remote one downloaded

Then renames: a remote delete of A plus an upload of a new name B of the same content is a
server-side move A -> B (no data moved); a local delete of A plus a download of a new name B
of the content A holds is a local rename.  And copies: an upload of a new name B whose
content a remote object A holds (A left as it is by this plan) is a server-side copy A -> B
(no data, no hashmap sent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pithos.sync.state import STATE_DIR, BaseEntry, LocalFile, RemoteEntry

AGREE = "agree"
FORGET = "forget"
UPLOAD = "upload"
DOWNLOAD = "download"
DELETE_LOCAL = "delete-local"
DELETE_REMOTE = "delete-remote"
MOVE_REMOTE = "move-remote"
MOVE_LOCAL = "move-local"
COPY_REMOTE = "copy-remote"
CONFLICT = "conflict"

# What changes something (everything but bookkeeping).
TRANSFERS = frozenset({UPLOAD, DOWNLOAD, DELETE_LOCAL, DELETE_REMOTE, MOVE_REMOTE, MOVE_LOCAL,
                       COPY_REMOTE, CONFLICT})


@dataclass(frozen=True)
class Action:
    kind: str
    path: str
    local: LocalFile | None = None  # the local file as scanned (checked again before use)
    remote: RemoteEntry | None = None  # the remote object as last seen
    base: BaseEntry | None = None
    source: str | None = None  # moves: the old name; copies: the remote object copied

    def describe(self) -> str:
        if self.kind in (MOVE_LOCAL, MOVE_REMOTE, COPY_REMOTE):
            return f"{self.kind} {self.source} -> {self.path}"
        return f"{self.kind} {self.path}"


def valid_name(name: str) -> bool:
    """Whether a remote name can be a file of the folder (no empty, '.' or '..' segment, no
    NUL, not the state directory)."""
    if not name or name.startswith("/") or name.endswith("/") or "\0" in name:
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts) and parts[0] != STATE_DIR


def plan(base: Mapping[str, BaseEntry], local: Mapping[str, LocalFile],
         remote: Mapping[str, RemoteEntry], unknown: set[str] | frozenset[str] = frozenset(),
         ignored: Callable[[str], bool] = lambda _: False) -> list[Action]:
    """The actions that bring the folder and the container into agreement, renames found.
    Paths in `unknown` (present locally but not hashed this pass) are left alone."""
    actions: list[Action] = []
    paths = set(base) | set(local) | {p for p in remote if valid_name(p) and not ignored(p)}
    for path in sorted(paths):
        if path in unknown:
            continue
        b, lf, r = base.get(path), local.get(path), remote.get(path)
        if b is not None and ignored(path):
            # Synced before a rule came to ignore it: the scan no longer lists it, which is
            # no deletion.  Forgotten, both sides left as they are ("keeps names out both
            # ways"); the rule's removal finds them again.
            actions.append(Action(FORGET, path, base=b))
            continue
        bm = b.md5 if b else None
        lm = lf.md5 if lf else None
        rm = r.md5 if r else None
        if lm == rm:
            if lf is None:
                if b is not None:
                    actions.append(Action(FORGET, path, base=b))
            elif b is None or (b.md5, b.size, b.mtime_ns, b.inode) != (
                    lf.md5, lf.size, lf.mtime_ns, lf.inode):
                actions.append(Action(AGREE, path, lf, r, b))
        elif lm == bm:
            actions.append(Action(DOWNLOAD if r else DELETE_LOCAL, path, lf, r, b))
        elif rm == bm:
            actions.append(Action(UPLOAD if lf else DELETE_REMOTE, path, lf, r, b))
        elif lf is None:
            actions.append(Action(DOWNLOAD, path, lf, r, b))
        elif r is None:
            actions.append(Action(UPLOAD, path, lf, r, b))
        else:
            actions.append(Action(CONFLICT, path, lf, r, b))
    return find_copies(find_moves(actions), remote)


def find_moves(actions: list[Action]) -> list[Action]:
    """Pair deletes with new names of the same content: moves instead of transfers."""
    remote_gone: dict[str, list[Action]] = {}
    local_gone: dict[str, list[Action]] = {}
    for a in actions:
        if a.kind == DELETE_REMOTE and a.remote is not None:
            remote_gone.setdefault(a.remote.md5, []).append(a)
        elif a.kind == DELETE_LOCAL and a.local is not None:
            local_gone.setdefault(a.local.md5, []).append(a)
    used: set[str] = set()
    out: list[Action] = []
    for a in actions:
        if a.kind == UPLOAD and a.remote is None and a.local is not None:
            candidates = [d for d in remote_gone.get(a.local.md5, []) if d.path not in used]
            if candidates:
                d = candidates[0]
                used.add(d.path)
                out.append(Action(MOVE_REMOTE, a.path, a.local, d.remote, d.base,
                                  source=d.path))
                continue
        elif a.kind == DOWNLOAD and a.local is None and a.remote is not None:
            candidates = [d for d in local_gone.get(a.remote.md5, []) if d.path not in used]
            if candidates:
                d = candidates[0]
                used.add(d.path)
                out.append(Action(MOVE_LOCAL, a.path, d.local, a.remote, d.base,
                                  source=d.path))
                continue
        out.append(a)
    return [a for a in out if not (a.kind in (DELETE_REMOTE, DELETE_LOCAL) and a.path in used)]


def find_copies(actions: list[Action], remote: Mapping[str, RemoteEntry]) -> list[Action]:
    """Uploads of new names whose content a remote object holds become server-side copies
    of it, from objects no action of this plan touches (a source deleted or replaced
    meanwhile fails the copy's X-Source-If-Match: the next pass plans the path again)."""
    touched = {a.path for a in actions if a.kind in TRANSFERS}
    touched |= {a.source for a in actions if a.source is not None}
    sources: dict[str, str] = {}
    for path in sorted(remote):
        r = remote[path]
        if path not in touched and r.md5 and r.size > 0:
            sources.setdefault(r.md5, path)
    out: list[Action] = []
    for a in actions:
        src = (sources.get(a.local.md5) if a.kind == UPLOAD and a.remote is None
               and a.local is not None else None)
        if src is not None:
            out.append(Action(COPY_REMOTE, a.path, a.local, remote[src], a.base, source=src))
        else:
            out.append(a)
    return out
