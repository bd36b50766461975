"""`pithos store scrub`, and the report of quarantined blocks it shares with `store fsck`:
each block held in quarantine, whether it has healed (stored afresh since), and the objects,
volumes and recorded maps that name it, by name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pithos.cli.datadir import DataDir
from pithos.core.hashing import from_hex, to_hex
from pithos.mapper.scrub import scrub

MB = 1_000_000


def root_names(data: DataDir, roots: Iterable[bytes]) -> dict[bytes, list[str]]:
    """What each root names, for people: object versions in the catalog, volumes and
    snapshots, maps recorded by `pithos store put`."""
    from pithos.cli.roots import provided_roots

    names: dict[bytes, list[str]] = {root: [] for root in roots}
    if not names:
        return names
    for v in data.catalog().versions_naming(names):
        names[v.root].append(f"object {v.account}/{v.container}/{v.name} version {v.version}"
                             + ("" if v.current else " (not current)"))
    for named in provided_roots(data):
        if named.root in names:
            names[named.root].append(named.name)
    recorded = {root for root in data.roots() if root in names}
    for root in recorded:
        names[root].append(f"map {to_hex(root)} recorded by pithos store put")
    return names


def name_quarantined(data: DataDir, entries: list[dict[str, Any]]) -> None:
    """Add to each quarantined entry of a report (`{"hash", "healed", "roots"}`) the names
    of its roots, as `named_by`."""
    names = root_names(data, (from_hex(r) for e in entries for r in e["roots"]))
    for entry in entries:
        entry["named_by"] = [name for r in entry["roots"] for name in names[from_hex(r)]
                             or [f"map {r}"]]


def quarantine_lines(entries: list[dict[str, Any]]) -> list[str]:
    """One line per quarantined entry (named as by `name_quarantined`)."""
    lines = []
    for entry in entries:
        if entry["healed"]:
            state = "healed (stored afresh since)"
        elif entry["named_by"]:
            state = "named by " + ", ".join(entry["named_by"])
        else:
            state = "named by no map (garbage)"
        lines.append(f"quarantined block {entry['hash']}: {state}")
    return lines


def inline_damage(data: DataDir) -> tuple[int, list[str]]:
    """Every version kept inline checked against its root (the row is its content's only
    copy): how many, and one line per damaged one."""
    from pithos.mapper.inline import inline_root

    checked, damaged = 0, []
    for found in data.catalog().inline_contents():
        checked += 1
        if inline_root(found.data) != found.naming.root:
            n = found.naming
            damaged.append(f"corrupt inline object {n.account}/{n.container}/{n.name} "
                           f"version {n.version}" + ("" if n.current else " (not current)"))
    return checked, damaged


def run_scrub(data: DataDir, roots: Iterable[bytes], rate_mb_s: float, as_json: bool) -> int:
    """`pithos store scrub`: exit status 1 when a block was found damaged, a map names a
    block held in quarantine, or a version kept inline does not match its root."""
    report = scrub(data.blocker, roots, rate_mb_s * MB if rate_mb_s > 0 else None)
    inline_checked, inline_corrupt = inline_damage(data)
    clean = report.clean and not inline_corrupt
    result = report.as_dict()
    result["inline_objects"] = inline_checked
    result["inline_corrupt"] = inline_corrupt
    result["clean"] = clean
    entries: list[dict[str, Any]] = result["quarantined"]  # type: ignore[assignment]
    name_quarantined(data, entries)
    if as_json:
        import json

        print(json.dumps(result))
    else:
        bound = f"at most {rate_mb_s:g} MB/s" if rate_mb_s > 0 else "unbounded"
        print(f"scrubbed {report.blocks} blocks ({report.bytes_checked} bytes) in "
              f"{report.seconds:.1f} s, {bound}: {len(report.corrupt)} corrupt, "
              f"{len(report.quarantined)} quarantined now; {len(report.held)} held in "
              f"quarantine ({len(report.healed)} healed)")
        for line in quarantine_lines(entries):
            print(line)
        print(f"checked {inline_checked} objects kept inline")
        for line in inline_corrupt:
            print(line)
        print("clean" if clean else "damaged")
    return 0 if clean else 1
