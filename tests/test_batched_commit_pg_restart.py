"""PostgreSQL restarted (`pg_ctl restart -m fast`: every session ended, mid-batch) under a
storm of batched PUTs: requests fail with a 5xx or succeed, none is acknowledged without
being committed, and the server's workers recover without a restart of their own.

The PostgreSQL server here is a private one (scripts/postgres with a directory and port of
its own), not the shared one of PITHOS_TEST_POSTGRES_URL that other tests use at the same time.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PithosServer, free_port
from tests.test_batched_commit_adversarial import (
    body_of,
    calls_since,
    check_stored,
    function_calls,
    put_storm,
    storm,
)
from tests.test_gc_stress import Client, login

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "postgres")


@pytest.fixture
def private_postgres():
    """(catalog URL, restart): a PostgreSQL server of this test's own."""
    if not glob.glob("/usr/lib/postgresql/*/bin"):
        pytest.skip("no PostgreSQL binaries (scripts/postgres up installs them)")
    # (Under /var/tmp: the postgres user, which runs it when we are root, must reach it.)
    env = {**os.environ, "PITHOS_PG_DIR": f"/var/tmp/pithos-pg-restart-{secrets.token_hex(4)}",
           "PITHOS_PG_PORT": str(free_port())}

    def run(*args: str) -> str:
        return subprocess.run([SCRIPT, *args], env=env, check=True, capture_output=True,
                              text=True, timeout=120).stdout.strip()

    url = run("up")
    try:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("ALTER DATABASE postgres SET track_functions = 'pl'"))
        engine.dispose()
        yield url, lambda: (run("down"), run("up"))
    finally:
        run("down", "--purge")
        shutil.rmtree(env["PITHOS_PG_DIR"], ignore_errors=True)


def test_postgres_restarted_mid_batch(private_postgres, tmp_path):
    catalog, restart = private_postgres
    server = PithosServer(tmp_path / "data", catalog=catalog, serve_args=("--workers", "2"))
    try:
        clients = [Client(server, login(server))]
        assert clients[0].request("PUT", "/pgr")[0] == 201
        before = function_calls(catalog)
        outcome: list = []
        writers = threading.Thread(target=lambda: outcome.append(
            put_storm(clients, "pgr", seconds=10)))
        writers.start()
        try:
            time.sleep(3)
            restart()
        finally:
            writers.join(timeout=120)
        acknowledged, attempted, others = outcome[0]
        print(f"{len(acknowledged)} acknowledged, {len(others)} failed during the storm")
        assert acknowledged and others  # some before, some during the restart
        # Failed while PostgreSQL was away: a 5xx saying so, never a dropped connection.
        assert [o for o in others if o[1] not in (500, 503)] == []
        # Recovered without a restart of the server: within a few rounds all commit again.
        rounds: list[list[int]] = []
        while len(rounds) < 6 and (not rounds or rounds[-1] != [201] * 24):
            names = [f"after-{len(rounds)}-{i}" for i in range(24)]
            rounds.append(storm(24, lambda i, names=names: clients[0].request(
                "PUT", f"/pgr/{names[i]}", body_of(names[i]))[0]))
        print("failed per round of 24 after the restart:", [24 - r.count(201) for r in rounds])
        assert rounds[-1] == [201] * 24, rounds
        assert calls_since(catalog, before)[0] > 0
        attempted |= {f"after-{r}-{i}" for r in range(len(rounds)) for i in range(24)}
        acknowledged |= {f"after-{len(rounds) - 1}-{i}" for i in range(24)}
        check_stored(clients, "pgr", acknowledged, attempted)
    finally:
        server.stop()
