"""Projects, holdings and commissions in the catalog (pithos/catalog/projects.py), on SQLite and
PostgreSQL: the storage charge rides the container's counters; concurrent charges never pass a
limit; the commission protocol, as a hypothesis state machine of issuers that issue, accept,
reject and crash, and a reaper."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from pithos.catalog import Catalog
from pithos.core.errors import Conflict, InvalidArgument, QuotaExceeded

ROOT = b"\x01" * 32


def put(catalog, container_id: int, name: str, size: int):
    return catalog.put_version(container_id, name, root=ROOT, size=size, etag="e",
                               content_type="application/octet-stream", meta={})


def test_storage_is_charged_to_the_home_project_and_released(catalog, container):
    """Bytes are those of every version kept (the history too); objects the live ones."""
    _, box = container
    catalog.set_quota("acct", {"bytes": 100})
    put(catalog, box.id, "a", 60)
    with pytest.raises(QuotaExceeded, match="bytes"):
        put(catalog, box.id, "b", 41)
    assert catalog.container(box.account_id, "c").objects == 1  # the refused one left nothing
    with pytest.raises(QuotaExceeded, match="bytes"):
        put(catalog, box.id, "a", 41)  # an overwrite keeps the old version: 60 + 41
    put(catalog, box.id, "a", 40)
    held = catalog.holdings("acct")
    assert (held["bytes"].usage, held["objects"].usage, held["bytes"].limit) == (100, 1, 100)
    catalog.delete_object(box.id, "a")
    held = catalog.holdings("acct")
    assert (held["bytes"].usage, held["objects"].usage) == (100, 0)  # its versions are kept
    assert catalog.purge_history(box.id, "a", time.time() + 1) == 2
    assert catalog.holdings("acct")["bytes"].usage == 0


def test_a_container_that_keeps_no_history_is_charged_its_current_versions(catalog):
    acct = catalog.ensure_account("acct")
    catalog.create_container(acct, "flat", versioning="none")
    box = catalog.container(acct, "flat")
    catalog.set_quota("acct", {"bytes": 100})
    put(catalog, box.id, "a", 60)
    put(catalog, box.id, "a", 100)  # replaces the 60: its growth only
    assert catalog.holdings("acct")["bytes"].usage == 100
    with pytest.raises(QuotaExceeded):
        put(catalog, box.id, "b", 1)
    catalog.delete_object(box.id, "a")
    assert catalog.holdings("acct")["bytes"].usage == 0


def test_a_container_of_another_project_charges_that_project(catalog):
    acct = catalog.ensure_account("acct")
    project = catalog.create_project("team")
    catalog.create_container(acct, "shared", project_id=project.id)
    box = catalog.container(acct, "shared")
    catalog.set_quota(project.id, {"objects": 2})
    put(catalog, box.id, "a", 5)
    put(catalog, box.id, "b", 7)
    with pytest.raises(QuotaExceeded, match="objects"):
        put(catalog, box.id, "c", 1)
    assert catalog.holdings(project.id)["bytes"].usage == 12
    assert catalog.holdings("acct")["bytes"].usage == 0
    for name in ("a", "b"):
        catalog.delete_object(box.id, name)
    assert catalog.holdings(project.id)["bytes"].usage == 12  # the versions are kept
    catalog.delete_container(box.id)
    held = catalog.holdings(project.id)
    assert (held["objects"].usage, held["bytes"].usage) == (0, 0)


def test_images_count_against_their_project(catalog):
    acct = catalog.ensure_account("acct")
    catalog.set_quota("acct", {"images": 1})
    kw = dict(name="i", disk_format="raw", container_format="bare", min_disk=0, min_ram=0,
              visibility="private", protected=False, properties={})
    catalog.create_image(acct, "00000000-0000-0000-0000-000000000001", **kw)
    with pytest.raises(QuotaExceeded, match="images"):
        catalog.create_image(acct, "00000000-0000-0000-0000-000000000002", **kw)
    assert catalog.image("00000000-0000-0000-0000-000000000002") is None
    catalog.delete_image("00000000-0000-0000-0000-000000000001")
    assert catalog.holdings("acct")["images"].usage == 0


def test_projects_members_and_names(catalog):
    catalog.ensure_account("acct")
    with pytest.raises(Conflict):
        catalog.create_project("acct")  # would shadow the account's home project
    team = catalog.create_project("team", "a team")
    with pytest.raises(Conflict):
        catalog.create_project("team")
    with pytest.raises(InvalidArgument):
        catalog.create_project("a/b")
    user = catalog.add_user("acct", "u", "scrypt$00$00", False)
    assert not catalog.is_member(user, team.id)
    assert catalog.set_member(team.id, user.id, True)
    assert not catalog.set_member(team.id, user.id, True)
    assert catalog.is_member(user, team.id) and catalog.is_member(user, "acct")
    assert [p.name for p in catalog.user_projects(user)] == ["acct", "team"]
    assert [m.name for m in catalog.project_members(team.id)] == ["u"]
    assert catalog.project("team") == team and catalog.project(team.id) == team
    assert catalog.project("acct").home
    with pytest.raises(InvalidArgument):
        catalog.set_quota(team.id, {"unicorns": 1})


def test_concurrent_uploads_never_pass_the_project_limit(catalog, container):
    """50 writers at once against a limit that fits 10: at most the limit is used, and the
    usage is exactly what was stored."""
    _, box = container
    catalog.set_quota("acct", {"bytes": 10 * 1000})
    stored, refused, other = [], [], []

    def writer(i: int) -> None:
        try:
            put(catalog, box.id, f"o{i}", 1000)
            stored.append(i)
        except QuotaExceeded:
            refused.append(i)
        except Exception as exc:  # counted: the test fails on any
            other.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not other
    assert len(stored) == 10 and len(refused) == 40
    assert catalog.holdings("acct")["bytes"].usage == 10 * 1000
    assert catalog.container(box.account_id, "c").bytes == 10 * 1000


def test_commissions_issue_accept_reject_and_the_reaper(catalog):
    project = catalog.create_project("p")
    catalog.set_quota(project.id, {"vcpus": 4})
    first = catalog.issue_commission(project.id, {"vcpus": 3, "servers": 1}, "t:1")
    with pytest.raises(QuotaExceeded, match="vcpus"):
        catalog.issue_commission(project.id, {"vcpus": 2}, "t:2")  # pending counts
    assert catalog.holdings(project.id)["vcpus"].pending == 3
    assert catalog.accept_commission(first) and not catalog.accept_commission(first)
    assert not catalog.reject_commission(first)
    held = catalog.holdings(project.id)
    assert (held["vcpus"].usage, held["vcpus"].pending, held["servers"].usage) == (3, 0, 1)
    lost = catalog.issue_commission(project.id, {"vcpus": 1}, "t:3", lease_s=30)
    assert [c.name for c in catalog.commissions("t:")] == ["t:3"]
    assert catalog.reap_commissions(time.time()) == 0  # not expired yet
    assert catalog.reap_commissions(time.time() + 31) == 1
    assert not catalog.accept_commission(lost)  # its issuer came back too late: undo
    release = catalog.issue_commission(project.id, {"vcpus": -3, "servers": -1}, "t:4")
    assert catalog.holdings(project.id)["vcpus"].usage == 3  # a release waits for its accept
    assert catalog.accept_commission(release)
    assert catalog.holdings(project.id)["vcpus"] == ("vcpus", 4, 0, 0)


# -- the commission protocol as a state machine ------------------------------------------------

LIMITS = {"vcpus": 8, "ram_mib": 4096}


class CommissionProtocol(RuleBasedStateMachine):
    """Issuers issue commissions, then accept, reject, or crash (forget them); a reaper
    rejects what has expired; the clock moves.  Always: usage + pending <= limit, and in the
    end, after the reaper took every orphan, usage = the sum of what was accepted."""

    issued = Bundle("issued")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.catalog = Catalog(f"sqlite:///{self.dir}/c.sqlite")
        self.project = self.catalog.create_project("p").id
        self.catalog.set_quota(self.project, dict(LIMITS))
        self.accepted = {r: 0 for r in LIMITS}
        self.pending: dict[int, dict[str, int]] = {}
        self.now = time.time()

    def teardown(self) -> None:
        self.catalog.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(target=issued, vcpus=st.integers(-3, 5), ram=st.integers(-1024, 3000),
          lease=st.integers(1, 100))
    def issue(self, vcpus, ram, lease):
        want = {"vcpus": vcpus, "ram_mib": ram}
        reserved = {r: sum(max(p.get(r, 0), 0) for p in self.pending.values())
                    for r in LIMITS}
        fits = all(q <= 0 or self.accepted[r] + reserved[r] + q <= LIMITS[r]
                   for r, q in want.items())
        try:
            serial = self.catalog.issue_commission(self.project, want, "m",
                                                   lease_s=self.now + lease - time.time())
        except QuotaExceeded:
            assert not fits
            return None
        assert fits
        self.pending[serial] = {r: q for r, q in want.items() if q}
        return serial

    def _resolve(self, serial, accept: bool) -> None:
        ok = (self.catalog.accept_commission(serial) if accept
              else self.catalog.reject_commission(serial))
        assert ok == (serial in self.pending)
        provisions = self.pending.pop(serial, None)
        if ok and accept:
            for r, q in provisions.items():
                self.accepted[r] += q

    @rule(serial=consumes(issued))
    def accept(self, serial):
        if serial is not None:
            self._resolve(serial, True)

    @rule(serial=consumes(issued))
    def reject(self, serial):
        if serial is not None:
            self._resolve(serial, False)

    @rule(serial=consumes(issued))
    def crash(self, serial):
        """The issuer dies: nobody will resolve this commission but the reaper."""

    @rule(dt=st.integers(0, 120))
    def reap(self, dt):
        self.now += dt
        expired = {c.id for c in self.catalog.commissions() if c.expires <= self.now}
        assert self.catalog.reap_commissions(self.now) == len(expired)
        for serial in expired:
            self.pending.pop(serial)

    @invariant()
    def within_limits(self):
        held = self.catalog.holdings(self.project)
        for r, limit in LIMITS.items():
            reserved = sum(max(p.get(r, 0), 0) for p in self.pending.values())
            assert held[r].usage == self.accepted[r]
            assert held[r].pending == reserved
            assert held[r].usage + held[r].pending <= limit


CommissionProtocol.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                                deadline=None)
test_commission_protocol = CommissionProtocol.TestCase


def test_migration_7_makes_todays_usage_the_home_projects_holdings(tmp_path, monkeypatch):
    """A catalog of schema 6 with data: after the upgrade (migrations 7 and 8) each account's
    home project holds its live objects (the counters) and the bytes of every version kept,
    and charges go on from there."""
    from sqlalchemy import create_engine

    from pithos.catalog import schema

    url = f"sqlite:///{tmp_path}/c.sqlite"
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:6])
    Catalog(url).close()
    monkeypatch.undo()
    engine = create_engine(url)
    with engine.begin() as conn:  # rows as schema 6 kept them (no holdings)
        conn.execute(schema.accounts.insert().values(id=1, name="old", created=1.0))
        conn.execute(schema.containers.insert().values(id=1, account_id=1, name="c",
                                                       created=1.0))
        conn.execute(schema.container_stats.insert(), [
            {"container_id": 1, "shard": i, "objects": int(i == 0), "bytes": 70 * (i == 0)}
            for i in range(8)])
        conn.execute(schema.objects.insert().values(id=1, container_id=1, name="o", uuid="u",
                                                    current_id=2))
        conn.execute(schema.versions.insert(), [  # an old version kept, and the current one
            {"id": i, "object_id": 1, "vid": f"v{i}", "root": ROOT, "size": size, "etag": "e",
             "content_type": "t", "created": 1.0, "deleted": False}
            for i, size in ((1, 10), (2, 70))])
    engine.dispose()
    upgraded = Catalog(url)
    try:
        held = upgraded.holdings("old")
        assert (held["bytes"].usage, held["objects"].usage) == (80, 1)
        put(upgraded, 1, "new", 5)
        assert upgraded.holdings("old")["bytes"].usage == 85
        assert upgraded.holdings("old")["objects"].usage == 2
    finally:
        upgraded.close()
