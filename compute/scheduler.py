"""The scheduler: which agent runs a new server.

Filters (as Nova's): the agent is enabled and alive (reported since `alive_since`), and has
the flavor's RAM and vCPUs free, counting every server already placed on it. Weigher: the
most free RAM first (Nova's RAMWeigher), then the most free vCPUs, then the name (stable).
None fits: Conflict with the reason (HTTP 409), never a server left to fail later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from compute.db import Agent, Flavor, Usage
from pithos.core.errors import Conflict


def choose_agent(agents: Sequence[Agent], usage: Mapping[str, Usage], flavor: Flavor,
                 alive_since: float) -> str:
    live = [a for a in agents if a.enabled and a.heartbeat >= alive_since]
    if not live:
        raise Conflict("No valid host was found. No compute agent is up (none has reported "
                       "in the last 30 s).")
    fits: list[tuple[int, int, str]] = []
    best_ram = 0
    for a in live:
        used = usage.get(a.name, Usage())
        free_ram, free_cpus = a.ram_mib - used.ram_mib, a.vcpus - used.vcpus
        best_ram = max(best_ram, free_ram)
        if free_ram >= flavor.ram_mib and free_cpus >= flavor.vcpus:
            fits.append((-free_ram, -free_cpus, a.name))
    if not fits:
        raise Conflict(f"No valid host was found. There are not enough hosts available: "
                       f"flavor {flavor.name} needs {flavor.ram_mib} MiB of RAM and "
                       f"{flavor.vcpus} vCPU(s); the most free RAM on a live host is "
                       f"{best_ram} MiB ({len(live)} host(s) up).")
    return min(fits)[2]
