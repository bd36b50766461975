"""SQLite's write lock is waited for without stopping a gevent worker (catalog._begin_immediate)."""

import subprocess
import sys
import textwrap


def test_a_write_waiting_for_the_lock_lets_the_other_greenlets_run(tmp_path):
    """Another process holds the write lock until a second greenlet of ours, which runs only
    if the waiting write leaves the hub free, tells it to let go.  A write that waited in a C
    call (sleeping the whole thread) would never let that greenlet run: the lock would never
    be released and the write would fail at the catalog's busy deadline."""
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import subprocess, sys
        import gevent
        from pithos.catalog import Catalog

        url = "sqlite:///{tmp_path}/catalog.sqlite"
        catalog = Catalog(url)
        holder = subprocess.Popen([sys.executable, "-c", '''
        import sqlite3, sys
        db = sqlite3.connect("{tmp_path}/catalog.sqlite", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        sys.stdin.readline()  # until told
        db.execute("COMMIT")
        print("released", flush=True)
        '''], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        events = []
        def writer():
            account_id = catalog.ensure_account("waiting")
            events.append("written")
            return account_id
        def other():
            for _ in range(20):
                gevent.sleep(0.01)
                events.append("tick")
            events.append("release")
            holder.stdin.write("go\\n")
            holder.stdin.flush()
        waiting = gevent.spawn(writer)
        gevent.sleep(0)  # the write starts waiting for the lock first
        ticking = gevent.spawn(other)
        account_id = waiting.get(timeout=50)
        ticking.join()
        assert holder.stdout.readline().strip() == "released"
        holder.wait()
        assert catalog.account("waiting").id == account_id
        print(" ".join(events))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    events = done.stdout.split()
    # The other greenlet ran all along while the write waited, and the write went through
    # only after the lock was let go.
    assert events == ["tick"] * 20 + ["release", "written"]
