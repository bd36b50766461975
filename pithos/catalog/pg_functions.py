"""The PL/pgSQL functions of a PostgreSQL catalog, as migration 10 creates them.

`pithos_put_version` commits a new version in one statement: one round trip to the server
instead of a dozen (BEGIN, the object's row, the version, its metadata, the policy, the
charge, the counters, the change number, COMMIT, and the commit guard's own transaction),
each of which cost the worker and the server CPU.  It does exactly what the Python path of
`Catalog.put_version` does (SQLite runs that path, and PostgreSQL for a copy or a move that
checks its source), in the same order, so the lock order is unchanged: the object's row,
the project's holdings (bytes, then objects), the container's stat shard, the containers row
of the change number last (migration 10's; migration 11's takes none: the change is marked
on the object's row and numbered by the feed's reader, pithos/catalog/changes.py).

`pithos_charge_storage` charges a container's change of usage to its project.  A project's
holding of a resource without a limit is not locked for writing: the charge is added to one
of its **stripes** (`holding_stripes`, chosen at random by the caller) under a KEY SHARE
lock of the holding, which concurrent charges share; its usage is the holding's plus its
stripes'.  A holding with a limit is charged as before, locked FOR UPDATE and checked on its
newest version.  Why that stays exact: stripes of a holding are zero whenever it has a limit,
since `set_quota` locks the holding FOR UPDATE (waiting for every KEY SHARE holder, i.e. for
every striped charge in flight, to commit) and folds the stripes into it before it sets a
limit; a striped charge takes its KEY SHARE lock with a read of the limit on the newest row,
so one that finds a limit set meanwhile is rolled back whole as a serialization failure
(40001) and runs again (retried_write) on the checked path.

Errors a caller turns into the project's (pithos/catalog/pg_commit.py): SQLSTATE PT001 the
writer's lease was lost, PT002 a source gone (Conflict), PT003 a precondition failed, PT004 a
quota exceeded; the message is the one the Python path gives.

The texts below are migrations 10, 11, 12 and 13's: a later change is a new migration (CREATE OR
REPLACE with its own text), never an edit of these.
"""

from __future__ import annotations

# Stripes per (project, resource): concurrent charges of one project pick one at random,
# so two of them wait for each other only when they pick the same one.
HOLDING_STRIPES = 32

CHARGE_STORAGE_V10 = r"""
CREATE OR REPLACE FUNCTION pithos_charge_storage(
    p_project text, p_bytes bigint, p_objects bigint, p_check boolean, p_stripe integer,
    p_released bigint)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    v_open integer := 0;
    v_rows integer;
    v_there integer;
    v_over text;
BEGIN
    IF p_bytes = 0 AND p_objects = 0 AND p_released = 0 THEN
        RETURN;
    END IF;
    -- A look without a lock: both rows there and neither limited takes the striped path.
    SELECT count(*) FILTER (WHERE quota_limit IS NULL) INTO v_open FROM project_holdings
     WHERE project_id = p_project AND resource IN ('bytes', 'objects');
    IF v_open = 2 THEN
        -- Shared with every other striped charge; excludes set_quota's FOR UPDATE.  The
        -- limits read here are the newest (a locking read waits, then re-reads the row).
        v_open := 0;
        FOR r IN SELECT quota_limit FROM project_holdings
                  WHERE project_id = p_project AND resource IN ('bytes', 'objects')
                  ORDER BY resource FOR KEY SHARE LOOP
            IF r.quota_limit IS NULL THEN
                v_open := v_open + 1;
            END IF;
        END LOOP;
        IF v_open <> 2 THEN
            RAISE EXCEPTION 'a limit was set on project % meanwhile', p_project
                USING ERRCODE = '40001';
        END IF;
        INSERT INTO holding_stripes AS s (project_id, resource, stripe, usage)
        SELECT p_project, q.resource, p_stripe, q.amount
          FROM (VALUES ('bytes', p_bytes), ('objects', p_objects - p_released))
               AS q(resource, amount)
         WHERE q.amount <> 0
         ORDER BY q.resource
        ON CONFLICT (project_id, resource, stripe) DO UPDATE SET usage = s.usage + EXCLUDED.usage;
        RETURN;
    END IF;
    -- Limited (or a row missing): the rows locked in resource order, checked on their newest
    -- versions.
    PERFORM 1 FROM project_holdings
      WHERE project_id = p_project AND resource IN ('bytes', 'objects')
      ORDER BY resource FOR UPDATE;
    UPDATE project_holdings h
       SET usage = h.usage + CASE WHEN h.resource = 'bytes' THEN p_bytes
                                  ELSE p_objects - p_released END
     WHERE h.project_id = p_project AND h.resource IN ('bytes', 'objects')
       AND (NOT p_check
            OR CASE WHEN h.resource = 'bytes' THEN p_bytes ELSE p_objects END <= 0
            OR h.quota_limit IS NULL
            OR h.usage + h.pending + CASE WHEN h.resource = 'bytes' THEN p_bytes
                                          ELSE p_objects - p_released END
               <= h.quota_limit);
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows = 2 THEN
        RETURN;
    END IF;
    SELECT count(*), string_agg(resource, ' and ' ORDER BY resource)
           FILTER (WHERE quota_limit IS NOT NULL AND usage + pending
                   + CASE WHEN resource = 'bytes' THEN p_bytes
                          ELSE p_objects - p_released END > quota_limit)
      INTO v_there, v_over FROM project_holdings
     WHERE project_id = p_project AND resource IN ('bytes', 'objects');
    IF v_there = 2 THEN
        RAISE EXCEPTION 'project quota exceeded for %: the new version would pass its limit',
            coalesce(v_over, 'storage') USING ERRCODE = 'PT004';
    END IF;
    -- The missing rows had no limit and were never charged: made and charged alone.
    FOR r IN SELECT q.resource, q.amount
               FROM (VALUES ('bytes', p_bytes), ('objects', p_objects - p_released))
                    AS q(resource, amount)
              WHERE q.amount <> 0
                AND NOT EXISTS (SELECT 1 FROM project_holdings
                                 WHERE project_id = p_project AND resource = q.resource)
              ORDER BY q.resource LOOP
        INSERT INTO project_holdings (project_id, resource) VALUES (p_project, r.resource)
        ON CONFLICT DO NOTHING;
        UPDATE project_holdings h SET usage = h.usage + r.amount
         WHERE h.project_id = p_project AND h.resource = r.resource
           AND (NOT p_check OR r.amount <= 0 OR h.quota_limit IS NULL
                OR h.usage + h.pending + r.amount <= h.quota_limit);
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows <> 1 THEN
            RAISE EXCEPTION 'project quota exceeded for %: % more would pass its limit',
                r.resource, r.amount USING ERRCODE = 'PT004';
        END IF;
    END LOOP;
END
$fn$
"""

PUT_VERSION_V10 = r"""
CREATE OR REPLACE FUNCTION pithos_put_version(
    p_guard_class integer, p_guard_lease integer, p_guard_pid integer,
    p_container_id integer, p_name text, p_vid text, p_root bytea, p_size bigint,
    p_etag text, p_content_type text, p_created double precision, p_modified_by text,
    p_delete_at double precision, p_dlo_manifest text, p_slo_manifest text, p_inline bytea,
    p_meta_domains text[], p_meta_keys text[], p_meta_values text[],
    p_grant_account integer, p_grant_hashes bytea[], p_sources integer[],
    p_expect_absent boolean, p_expect_match text[], p_now double precision,
    p_new_uuid text, p_shard integer, p_stripe integer)
RETURNS TABLE (object_id integer, object_uuid text, version_id integer)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_obj integer;
    v_current integer;
    v_uuid text;
    v_old_size bigint;
    v_old_etag text;
    v_deleted boolean;
    v_old_delete_at double precision;
    v_version integer;
    v_cquota bigint;
    v_account integer;
    v_aquota bigint;
    v_versioning text;
    v_project text;
    v_growth bigint;
    v_used bigint;
    v_dropped bigint := 0;
    v_new_objects integer;
    v_released integer := 0;
    v_gone_bytes bigint := 0;
    v_seq bigint;
BEGIN
    -- The commit guard (pithos/catalog/leases.py), held in this transaction: the lease's
    -- lock in shared mode until the commit, so no collector revokes it meanwhile; and the
    -- lease must still be there, its lock held by its process's session.
    IF p_guard_lease IS NOT NULL THEN
        IF NOT (pg_try_advisory_xact_lock_shared(p_guard_class, p_guard_lease)
                AND EXISTS (SELECT 1 FROM upload_leases WHERE id = p_guard_lease)
                AND EXISTS (SELECT 1 FROM pg_locks
                             WHERE locktype = 'advisory' AND classid = p_guard_class::oid
                               AND objid = p_guard_lease::oid AND pid = p_guard_pid
                               AND mode = 'ShareLock' AND granted)) THEN
            RAISE EXCEPTION 'the writer''s lease was lost' USING ERRCODE = 'PT001';
        END IF;
    END IF;
    IF p_sources IS NOT NULL THEN
        IF (SELECT count(*) FROM versions WHERE id = ANY (p_sources))
           <> cardinality(p_sources) THEN
            RAISE EXCEPTION 'a source of this object was removed meanwhile; retry'
                USING ERRCODE = 'PT002';
        END IF;
    END IF;
    IF p_grant_hashes IS NOT NULL THEN
        -- (Sorted by the caller: two uploads granting shared blocks never wait in a cycle.)
        INSERT INTO account_blocks (account_id, hash)
        SELECT p_grant_account, g.hash FROM unnest(p_grant_hashes) WITH ORDINALITY AS g(hash, i)
         ORDER BY g.i
        ON CONFLICT DO NOTHING;
    END IF;

    -- The object's row, locked; its current version read once the lock is held.
    SELECT o.id, o.current_id, o.uuid INTO v_obj, v_current, v_uuid FROM objects o
     WHERE o.container_id = p_container_id AND o.name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO objects AS o (container_id, name, uuid, current_id)
        VALUES (p_container_id, p_name, p_new_uuid, NULL)
        ON CONFLICT (container_id, name) DO NOTHING RETURNING o.id INTO v_obj;
        IF v_obj IS NOT NULL THEN
            v_uuid := p_new_uuid;
            v_current := NULL;
        ELSE  -- created concurrently: the insert waited for that writer's commit
            SELECT o.id, o.current_id, o.uuid INTO v_obj, v_current, v_uuid FROM objects o
             WHERE o.container_id = p_container_id AND o.name = p_name FOR UPDATE;
        END IF;
    END IF;
    SELECT c.quota_bytes, c.account_id, a.quota_bytes, c.versioning,
           coalesce(c.project_id, a.name)
      INTO v_cquota, v_account, v_aquota, v_versioning, v_project
      FROM containers c JOIN accounts a ON a.id = c.account_id WHERE c.id = p_container_id;
    IF v_current IS NOT NULL THEN
        SELECT v.size, v.deleted, v.delete_at, v.etag
          INTO v_old_size, v_deleted, v_old_delete_at, v_old_etag
          FROM versions v WHERE v.id = v_current;
        IF NOT FOUND THEN
            v_old_size := NULL;
            v_old_etag := NULL;
        ELSIF v_deleted OR (v_old_delete_at IS NOT NULL AND v_old_delete_at <= p_now) THEN
            IF NOT v_deleted THEN
                -- Expired but not reaped: its usage is still counted.  Released with the
                -- new version's charge below, in one charge and one count, so the rows
                -- are locked once each and in the one order.
                v_released := 1;
                v_gone_bytes := v_old_size;
            END IF;
            v_uuid := p_new_uuid;
            UPDATE objects o SET uuid = v_uuid WHERE o.id = v_obj;
            v_old_size := NULL;
            v_old_etag := NULL;
        END IF;
    END IF;

    -- The precondition, on the locked current version (pithos.catalog.changes.check_expect).
    IF p_expect_absent AND v_old_etag IS NOT NULL THEN
        RAISE EXCEPTION 'If-None-Match: * and the object exists' USING ERRCODE = 'PT003';
    END IF;
    IF p_expect_match IS NOT NULL THEN
        IF v_old_etag IS NULL THEN
            RAISE EXCEPTION 'If-Match and the object does not exist' USING ERRCODE = 'PT003';
        END IF;
        IF NOT ('*' = ANY (p_expect_match) OR v_old_etag = ANY (p_expect_match)) THEN
            RAISE EXCEPTION 'If-Match: the object''s ETag is %', v_old_etag
                USING ERRCODE = 'PT003';
        END IF;
    END IF;

    INSERT INTO versions AS v (object_id, vid, root, size, etag, content_type, created,
                               modified_by, deleted, delete_at, dlo_manifest, slo_manifest,
                               inline_data)
    VALUES (v_obj, p_vid, p_root, p_size, p_etag, p_content_type, p_created, p_modified_by,
            false, p_delete_at, p_dlo_manifest, p_slo_manifest, p_inline)
    RETURNING v.id INTO v_version;
    IF p_meta_keys IS NOT NULL THEN
        INSERT INTO version_meta (version_id, domain, key, value)
        SELECT v_version, m.d, m.k, m.val
          FROM unnest(p_meta_domains, p_meta_keys, p_meta_values) AS m(d, k, val);
    END IF;
    UPDATE objects o SET current_id = v_version WHERE o.id = v_obj;

    -- The container's and the account's quotas (Catalog._check_quota).
    v_growth := p_size - coalesce(v_old_size, 0);
    IF v_growth > 0 AND coalesce(v_cquota, 0) <> 0 THEN
        SELECT coalesce(sum(st.bytes), 0) INTO v_used FROM container_stats st
         WHERE st.container_id = p_container_id;
        IF v_used + v_growth > v_cquota THEN
            RAISE EXCEPTION 'container quota of % bytes exceeded', v_cquota
                USING ERRCODE = 'PT004';
        END IF;
    END IF;
    IF v_growth > 0 AND coalesce(v_aquota, 0) <> 0 THEN
        SELECT coalesce(sum(st.bytes), 0) INTO v_used
          FROM container_stats st JOIN containers c ON c.id = st.container_id
         WHERE c.account_id = v_account;
        IF v_used + v_growth > v_aquota THEN
            RAISE EXCEPTION 'account quota of % bytes exceeded', v_aquota
                USING ERRCODE = 'PT004';
        END IF;
    END IF;

    -- The project holds every version kept: this one more, less the history a container
    -- that keeps none drops now (Catalog._count).
    IF v_versioning = 'none' THEN
        SELECT coalesce(sum(v.size), 0) INTO v_dropped FROM versions v
         WHERE v.object_id = v_obj AND v.id <> v_version;
    END IF;
    v_new_objects := CASE WHEN v_old_size IS NULL THEN 1 ELSE 0 END;
    PERFORM pithos_charge_storage(v_project, p_size - v_dropped, v_new_objects, true,
                                  p_stripe, v_released);
    IF v_new_objects - v_released <> 0 OR v_growth - v_gone_bytes <> 0 THEN
        UPDATE container_stats st SET objects = st.objects + v_new_objects - v_released,
               bytes = st.bytes + v_growth - v_gone_bytes
         WHERE st.container_id = p_container_id AND st.shard = p_shard;
    END IF;
    IF v_versioning = 'none' THEN
        DELETE FROM versions v WHERE v.object_id = v_obj AND v.id <> v_version;
    END IF;

    -- The change number, last: the containers row stays locked to the commit, so numbers
    -- commit in order (pithos/catalog/changes.py).
    UPDATE containers c SET change_seq = c.change_seq + 1 WHERE c.id = p_container_id
    RETURNING c.change_seq INTO v_seq;
    UPDATE objects o SET change_seq = v_seq WHERE o.id = v_obj;

    object_id := v_obj;
    object_uuid := v_uuid;
    version_id := v_version;
    RETURN NEXT;
END
$fn$
"""

FUNCTIONS_V10 = (CHARGE_STORAGE_V10, PUT_VERSION_V10)

# Migration 11: the change is marked, not numbered (pithos/catalog/changes.py): the writer
# holds no containers row to its commit.  Migration 10's text with its last step replaced.
_NUMBERED_V10 = (
    "    -- The change number, last: the containers row stays locked to the commit, so numbers\n"
    "    -- commit in order (pithos/catalog/changes.py).\n"
    "    UPDATE containers c SET change_seq = c.change_seq + 1 WHERE c.id = p_container_id\n"
    "    RETURNING c.change_seq INTO v_seq;\n"
    "    UPDATE objects o SET change_seq = v_seq WHERE o.id = v_obj;\n")
_MARKED_V11 = (
    "    -- The change, marked for the feed's reader to number (pithos/catalog/changes.py):\n"
    "    -- only the object's row, which this transaction holds already.\n"
    "    UPDATE objects o SET change_seq = NULL,\n"
    "           change_stamp = nextval('pithos_change_stamps') WHERE o.id = v_obj;\n")
assert PUT_VERSION_V10.count(_NUMBERED_V10) == 1
PUT_VERSION_V11 = PUT_VERSION_V10.replace(_NUMBERED_V10, _MARKED_V11)
FUNCTIONS_V11 = (PUT_VERSION_V11,)

# Migration 12: a striped charge locks both of its stripe rows (bytes, then objects) even for
# a zero amount.  A transaction that charges more than once (a reap of several objects, one
# in a container that keeps no history) otherwise locked `objects` first and `bytes` later,
# the reverse of another's order: a deadlock, seen beside the one-call commits.
_SOME_STRIPES_V10 = (
    "               AS q(resource, amount)\n"
    "         WHERE q.amount <> 0\n"
    "         ORDER BY q.resource\n")
_BOTH_STRIPES_V12 = (
    "               AS q(resource, amount)\n"
    "         ORDER BY q.resource\n")
assert CHARGE_STORAGE_V10.count(_SOME_STRIPES_V10) == 1
CHARGE_STORAGE_V12 = CHARGE_STORAGE_V10.replace(_SOME_STRIPES_V10, _BOTH_STRIPES_V12)
FUNCTIONS_V12 = (CHARGE_STORAGE_V12,)

# Migration 13.  `pithos_charge_storage` with its two storage resources as one relation
# (resource, amount, growth) in their lock order, instead of a CASE on the resource repeated
# in each statement and a VALUES list in two: the same charge, the same locks in the same
# order, the same errors.  `growth` is what a limit checks (a release, <= 0, always passes);
# `amount` is what the usage changes by (the objects' count less an expired one released).
CHARGE_STORAGE_V13 = r"""
CREATE OR REPLACE FUNCTION pithos_charge_storage(
    p_project text, p_bytes bigint, p_objects bigint, p_check boolean, p_stripe integer,
    p_released bigint)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    v_resources text[] := ARRAY['bytes', 'objects'];
    v_amounts bigint[] := ARRAY[p_bytes, p_objects - p_released];
    v_growths bigint[] := ARRAY[p_bytes, p_objects];
    r record;
    v_open integer := 0;
    v_rows integer;
    v_there integer;
    v_over text;
BEGIN
    IF p_bytes = 0 AND p_objects = 0 AND p_released = 0 THEN
        RETURN;
    END IF;
    -- A look without a lock: both rows there and neither limited takes the striped path.
    SELECT count(*) FILTER (WHERE quota_limit IS NULL) INTO v_open FROM project_holdings
     WHERE project_id = p_project AND resource = ANY (v_resources);
    IF v_open = 2 THEN
        -- Shared with every other striped charge; excludes set_quota's FOR UPDATE.  The
        -- limits read here are the newest (a locking read waits, then re-reads the row).
        v_open := 0;
        FOR r IN SELECT quota_limit FROM project_holdings
                  WHERE project_id = p_project AND resource = ANY (v_resources)
                  ORDER BY resource FOR KEY SHARE LOOP
            IF r.quota_limit IS NULL THEN
                v_open := v_open + 1;
            END IF;
        END LOOP;
        IF v_open <> 2 THEN
            RAISE EXCEPTION 'a limit was set on project % meanwhile', p_project
                USING ERRCODE = '40001';
        END IF;
        -- Both stripe rows, in resource order, even for a zero amount (migration 12).
        INSERT INTO holding_stripes AS s (project_id, resource, stripe, usage)
        SELECT p_project, q.resource, p_stripe, q.amount
          FROM unnest(v_resources, v_amounts) AS q(resource, amount)
         ORDER BY q.resource
        ON CONFLICT (project_id, resource, stripe) DO UPDATE SET usage = s.usage + EXCLUDED.usage;
        RETURN;
    END IF;
    -- Limited (or a row missing): the rows locked in resource order, checked on their newest
    -- versions.
    PERFORM 1 FROM project_holdings
      WHERE project_id = p_project AND resource = ANY (v_resources)
      ORDER BY resource FOR UPDATE;
    UPDATE project_holdings h SET usage = h.usage + q.amount
      FROM unnest(v_resources, v_amounts, v_growths) AS q(resource, amount, growth)
     WHERE h.project_id = p_project AND h.resource = q.resource
       AND (NOT p_check OR q.growth <= 0 OR h.quota_limit IS NULL
            OR h.usage + h.pending + q.amount <= h.quota_limit);
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows = 2 THEN
        RETURN;
    END IF;
    SELECT count(*), string_agg(h.resource, ' and ' ORDER BY h.resource)
           FILTER (WHERE h.quota_limit IS NOT NULL
                   AND h.usage + h.pending + q.amount > h.quota_limit)
      INTO v_there, v_over
      FROM project_holdings h
      JOIN unnest(v_resources, v_amounts) AS q(resource, amount) ON q.resource = h.resource
     WHERE h.project_id = p_project;
    IF v_there = 2 THEN
        RAISE EXCEPTION 'project quota exceeded for %: the new version would pass its limit',
            coalesce(v_over, 'storage') USING ERRCODE = 'PT004';
    END IF;
    -- The missing rows had no limit and were never charged: made and charged alone.
    FOR r IN SELECT q.resource, q.amount, q.growth
               FROM unnest(v_resources, v_amounts, v_growths) AS q(resource, amount, growth)
              WHERE q.amount <> 0
                AND NOT EXISTS (SELECT 1 FROM project_holdings
                                 WHERE project_id = p_project AND resource = q.resource)
              ORDER BY q.resource LOOP
        INSERT INTO project_holdings (project_id, resource) VALUES (p_project, r.resource)
        ON CONFLICT DO NOTHING;
        UPDATE project_holdings h SET usage = h.usage + r.amount
         WHERE h.project_id = p_project AND h.resource = r.resource
           AND (NOT p_check OR r.growth <= 0 OR h.quota_limit IS NULL
                OR h.usage + h.pending + r.amount <= h.quota_limit);
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows <> 1 THEN
            RAISE EXCEPTION 'project quota exceeded for %: % more would pass its limit',
                r.resource, r.amount USING ERRCODE = 'PT004';
        END IF;
    END LOOP;
END
$fn$
"""

# Migration 13: the versions of concurrent PUTs of one worker committed in one transaction
# (pithos/catalog/pg_batch.py): one commit and one WAL flush for them all.  Each item is
# `pithos_put_version`'s call, unchanged, inside a block of its own (a subtransaction): an
# item that raises (a lost lease, a precondition, a quota, a deadlock) is rolled back alone
# and answered with its SQLSTATE and message, and the others still commit.  The per-item
# arrays (metadata, granted hashes, sources, If-Match's ETags) are flat, each element tagged
# with its item's number (1-based).  One stat shard and one holdings stripe for the batch: its
# transaction holds what its items lock until its commit, and a stripe or shard per item would
# be many rows another batch could take in another order.
PUT_VERSIONS_V13 = r"""
CREATE OR REPLACE FUNCTION pithos_put_versions(
    p_guard_class integer[], p_guard_lease integer[], p_guard_pid integer[],
    p_container_id integer[], p_name text[], p_vid text[], p_root bytea[], p_size bigint[],
    p_etag text[], p_content_type text[], p_created double precision[], p_modified_by text[],
    p_delete_at double precision[], p_dlo_manifest text[], p_slo_manifest text[],
    p_inline bytea[], p_meta_item integer[], p_meta_domains text[], p_meta_keys text[],
    p_meta_values text[], p_grant_account integer[], p_grant_item integer[],
    p_grant_hashes bytea[], p_source_item integer[], p_sources integer[],
    p_expect_absent boolean[], p_match_item integer[], p_expect_match text[],
    p_now double precision[], p_new_uuid text[], p_shard integer, p_stripe integer)
RETURNS TABLE (item integer, object_id integer, object_uuid text, version_id integer,
               err_state text, err_message text)
LANGUAGE plpgsql AS $fn$
DECLARE
    i integer;
    v_md text[];
    v_mk text[];
    v_mv text[];
    v_grant bytea[];
    v_sources integer[];
    v_match text[];
    v_obj integer;
    v_uuid text;
    v_version integer;
BEGIN
    FOR i IN 1 .. cardinality(p_name) LOOP
        v_md := NULL; v_mk := NULL; v_mv := NULL;
        v_grant := NULL; v_sources := NULL; v_match := NULL;
        IF i = ANY (p_meta_item) THEN
            SELECT array_agg(m.d ORDER BY m.n), array_agg(m.k ORDER BY m.n),
                   array_agg(m.val ORDER BY m.n)
              INTO v_md, v_mk, v_mv
              FROM unnest(p_meta_item, p_meta_domains, p_meta_keys, p_meta_values)
                   WITH ORDINALITY AS m(it, d, k, val, n)
             WHERE m.it = i;
        END IF;
        IF i = ANY (p_grant_item) THEN
            SELECT array_agg(g.hash ORDER BY g.n) INTO v_grant
              FROM unnest(p_grant_item, p_grant_hashes) WITH ORDINALITY AS g(it, hash, n)
             WHERE g.it = i;
        END IF;
        IF i = ANY (p_source_item) THEN
            SELECT array_agg(s.id ORDER BY s.n) INTO v_sources
              FROM unnest(p_source_item, p_sources) WITH ORDINALITY AS s(it, id, n)
             WHERE s.it = i;
        END IF;
        IF i = ANY (p_match_item) THEN
            SELECT array_agg(e.etag ORDER BY e.n) INTO v_match
              FROM unnest(p_match_item, p_expect_match) WITH ORDINALITY AS e(it, etag, n)
             WHERE e.it = i;
        END IF;
        item := i;
        BEGIN
            SELECT f.object_id, f.object_uuid, f.version_id INTO v_obj, v_uuid, v_version
              FROM pithos_put_version(
                p_guard_class[i], p_guard_lease[i], p_guard_pid[i], p_container_id[i],
                p_name[i], p_vid[i], p_root[i], p_size[i], p_etag[i], p_content_type[i],
                p_created[i], p_modified_by[i], p_delete_at[i], p_dlo_manifest[i],
                p_slo_manifest[i], p_inline[i], v_md, v_mk, v_mv, p_grant_account[i],
                v_grant, v_sources, p_expect_absent[i], v_match, p_now[i], p_new_uuid[i],
                p_shard, p_stripe) AS f;
            object_id := v_obj;
            object_uuid := v_uuid;
            version_id := v_version;
            err_state := NULL;
            err_message := NULL;
        EXCEPTION WHEN OTHERS THEN
            object_id := NULL;
            object_uuid := NULL;
            version_id := NULL;
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT;
        END;
        RETURN NEXT;
    END LOOP;
END
$fn$
"""

# Migration 13: `pithos_put_version` writes its object's row once, not twice: the current
# pointer and the change's mark (migration 11's) in one UPDATE, where the pointer was set.
# A write of a row is a new version of it, with new index entries when an indexed column
# changes (the mark does: objects_changes), and the row is the transaction's already.
_CURRENT_V10 = "    UPDATE objects o SET current_id = v_version WHERE o.id = v_obj;\n"
_CURRENT_AND_MARKED_V13 = (
    "    -- The current pointer and the change, marked for the feed's reader to number\n"
    "    -- (pithos/catalog/changes.py), in one write of the row this transaction holds.\n"
    "    UPDATE objects o SET current_id = v_version, change_seq = NULL,\n"
    "           change_stamp = nextval('pithos_change_stamps') WHERE o.id = v_obj;\n")
assert PUT_VERSION_V11.count(_CURRENT_V10) == 1 and PUT_VERSION_V11.count(_MARKED_V11) == 1
PUT_VERSION_V13 = PUT_VERSION_V11.replace(_CURRENT_V10, _CURRENT_AND_MARKED_V13).replace(
    _MARKED_V11, "")
FUNCTIONS_V13 = (CHARGE_STORAGE_V13, PUT_VERSION_V13, PUT_VERSIONS_V13)

# Migration 15: the container's and the account's byte quotas exact under concurrent
# commits.  Their usage is a sum over the container's stat shards, read in READ COMMITTED:
# two commits on two connections each read the sum without the other's growth and both
# passed (forty concurrent 1000-byte PUTs against a quota of 10,000 bytes stored more than
# ten).  A commit that checks a quota now first locks the row that quota lives on (the
# container's, the account's), so commits checking one quota take turns: the sum, a
# statement run after the lock was granted, sees the stats of the commit that held it.
# Only writers into a container or an account with a quota wait; the lock order (the
# object's row, then the container's, then the account's, then the holdings) is every
# writer's.
_QUOTAS_V10 = (
    "    IF v_growth > 0 AND coalesce(v_cquota, 0) <> 0 THEN\n"
    "        SELECT coalesce(sum(st.bytes), 0) INTO v_used FROM container_stats st\n")
_QUOTAS_LOCKED_V15 = (
    "    IF v_growth > 0 AND coalesce(v_cquota, 0) <> 0 THEN\n"
    "        PERFORM 1 FROM containers c WHERE c.id = p_container_id FOR NO KEY UPDATE;\n"
    "        SELECT coalesce(sum(st.bytes), 0) INTO v_used FROM container_stats st\n")
_ACCOUNT_QUOTA_V10 = (
    "    IF v_growth > 0 AND coalesce(v_aquota, 0) <> 0 THEN\n"
    "        SELECT coalesce(sum(st.bytes), 0) INTO v_used\n")
_ACCOUNT_QUOTA_LOCKED_V15 = (
    "    IF v_growth > 0 AND coalesce(v_aquota, 0) <> 0 THEN\n"
    "        PERFORM 1 FROM accounts a WHERE a.id = v_account FOR NO KEY UPDATE;\n"
    "        SELECT coalesce(sum(st.bytes), 0) INTO v_used\n")
assert PUT_VERSION_V13.count(_QUOTAS_V10) == 1
assert PUT_VERSION_V13.count(_ACCOUNT_QUOTA_V10) == 1
PUT_VERSION_V15 = PUT_VERSION_V13.replace(_QUOTAS_V10, _QUOTAS_LOCKED_V15).replace(
    _ACCOUNT_QUOTA_V10, _ACCOUNT_QUOTA_LOCKED_V15)
FUNCTIONS_V15 = (PUT_VERSION_V15,)

# Migration 16: a batch charges each project's unlimited holdings once, not once per item.
# Each item updated the batch's stripe rows again in its own subtransaction: N versions of
# the same two rows in one transaction, every later look-up walking the chain of the earlier
# ones, and the holding's KEY SHARE lock taken by N subtransactions (a multixact growing with
# each): with the stat shard, a quarter to a third of the backend's CPU per version in a
# batch of 16 (radosgw_bench's 4 KiB PUTs).  Now an item whose project is unlimited only
# takes that lock (`pithos_hold_striped`; not again for a project an earlier item of the
# batch holds already) and hands back its amounts; the batch adds them up per project and
# charges its stripe once, after its items, the projects in order.  Exact as before: the
# holding stays KEY SHARE locked from the item to the batch's commit, so no limit can be set
# meanwhile (set_quota's FOR UPDATE waits for the commit), and an item rolled back has
# handed back nothing.  A limited project's item is charged and checked on its own, in
# order, as before.  The stripes are now taken last and in project order, so two batches no
# longer close a cycle on two projects' stripes.
HOLD_STRIPED_V16 = r"""
CREATE OR REPLACE FUNCTION pithos_hold_striped(p_project text, p_held text[])
RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    v_open integer := 0;
BEGIN
    IF p_project = ANY (p_held) THEN
        RETURN true;  -- locked by an earlier item of this transaction, to its commit
    END IF;
    -- pithos_charge_storage's striped path, but its charge: a look without a lock, then
    -- the KEY SHARE lock that excludes set_quota, the limits read on the newest rows.
    SELECT count(*) FILTER (WHERE quota_limit IS NULL) INTO v_open FROM project_holdings
     WHERE project_id = p_project AND resource IN ('bytes', 'objects');
    IF v_open <> 2 THEN
        RETURN false;
    END IF;
    v_open := 0;
    FOR r IN SELECT quota_limit FROM project_holdings
              WHERE project_id = p_project AND resource IN ('bytes', 'objects')
              ORDER BY resource FOR KEY SHARE LOOP
        IF r.quota_limit IS NULL THEN
            v_open := v_open + 1;
        END IF;
    END LOOP;
    IF v_open <> 2 THEN
        RAISE EXCEPTION 'a limit was set on project % meanwhile', p_project
            USING ERRCODE = '40001';
    END IF;
    RETURN true;
END
$fn$
"""

_ONE_CALL_HEAD_V10 = (
    "CREATE OR REPLACE FUNCTION pithos_put_version(\n")
_ITEM_HEAD_V16 = (
    "CREATE OR REPLACE FUNCTION pithos_put_version_item(\n")
_ONE_CALL_SIGNATURE_V10 = (
    "    p_new_uuid text, p_shard integer, p_stripe integer)\n"
    "RETURNS TABLE (object_id integer, object_uuid text, version_id integer)\n")
_ITEM_SIGNATURE_V16 = (
    "    p_new_uuid text, p_shard integer, p_stripe integer, p_held text[])\n"
    "RETURNS TABLE (object_id integer, object_uuid text, version_id integer,\n"
    "               charge_project text, charge_bytes bigint, charge_objects bigint)\n")
_CHARGE_V10 = (
    "    PERFORM pithos_charge_storage(v_project, p_size - v_dropped, v_new_objects, true,\n"
    "                                  p_stripe, v_released);\n")
_CHARGE_HANDED_BACK_V16 = (
    "    -- Unlimited: held to the batch's commit and charged by the batch, once per project\n"
    "    -- (pithos_put_versions); limited: charged and checked now, as the one call does.\n"
    "    charge_project := NULL;\n"
    "    IF pithos_hold_striped(v_project, p_held) THEN\n"
    "        charge_project := v_project;\n"
    "        charge_bytes := p_size - v_dropped;\n"
    "        charge_objects := v_new_objects - v_released;\n"
    "    ELSE\n"
    "        PERFORM pithos_charge_storage(v_project, p_size - v_dropped, v_new_objects,\n"
    "                                      true, p_stripe, v_released);\n"
    "    END IF;\n")
assert PUT_VERSION_V15.count(_ONE_CALL_HEAD_V10) == 1
assert PUT_VERSION_V15.count(_ONE_CALL_SIGNATURE_V10) == 1
assert PUT_VERSION_V15.count(_CHARGE_V10) == 1
# A batch's item: the one call's text (migration 15's, unchanged itself) under its own name,
# with the charge handed back.
PUT_VERSION_ITEM_V16 = (PUT_VERSION_V15.replace(_ONE_CALL_HEAD_V10, _ITEM_HEAD_V16)
                        .replace(_ONE_CALL_SIGNATURE_V10, _ITEM_SIGNATURE_V16)
                        .replace(_CHARGE_V10, _CHARGE_HANDED_BACK_V16))

_BATCH_DECLARE_V13 = (
    "    v_version integer;\n"
    "BEGIN\n")
_BATCH_DECLARE_V16 = (
    "    v_version integer;\n"
    "    v_project text;\n"
    "    v_bytes bigint;\n"
    "    v_objects bigint;\n"
    "    v_k integer;\n"
    "    v_held text[] := '{}';\n"
    "    v_held_bytes bigint[] := '{}';\n"
    "    v_held_objects bigint[] := '{}';\n"
    "    r record;\n"
    "BEGIN\n")
_BATCH_CALL_V13 = (
    "            SELECT f.object_id, f.object_uuid, f.version_id INTO v_obj, v_uuid, v_version\n"
    "              FROM pithos_put_version(\n")
_BATCH_CALL_V16 = (
    "            SELECT f.object_id, f.object_uuid, f.version_id, f.charge_project,\n"
    "                   f.charge_bytes, f.charge_objects\n"
    "              INTO v_obj, v_uuid, v_version, v_project, v_bytes, v_objects\n"
    "              FROM pithos_put_version_item(\n")
_BATCH_ARGS_V13 = "                p_shard, p_stripe) AS f;\n"
_BATCH_ARGS_V16 = "                p_shard, p_stripe, v_held) AS f;\n"
_BATCH_ITEM_END_V13 = (
    "            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, "
    "err_message = MESSAGE_TEXT;\n"
    "        END;\n"
    "        RETURN NEXT;\n"
    "    END LOOP;\n"
    "END\n")
_BATCH_ITEM_END_V16 = (
    "            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, "
    "err_message = MESSAGE_TEXT;\n"
    "        END;\n"
    "        -- (Only a committed item's charge: one rolled back handed back nothing.)\n"
    "        IF err_state IS NULL AND v_project IS NOT NULL THEN\n"
    "            v_k := array_position(v_held, v_project);\n"
    "            IF v_k IS NULL THEN\n"
    "                v_held := v_held || v_project;\n"
    "                v_held_bytes := v_held_bytes || v_bytes;\n"
    "                v_held_objects := v_held_objects || v_objects;\n"
    "            ELSE\n"
    "                v_held_bytes[v_k] := v_held_bytes[v_k] + v_bytes;\n"
    "                v_held_objects[v_k] := v_held_objects[v_k] + v_objects;\n"
    "            END IF;\n"
    "        END IF;\n"
    "        RETURN NEXT;\n"
    "    END LOOP;\n"
    "    -- The unlimited projects' charges, one per project, in project order; both stripe\n"
    "    -- rows in resource order, even for a zero amount (migration 12).  If this fails (a\n"
    "    -- deadlock), the whole call fails and nothing of the batch commits.\n"
    "    FOR r IN SELECT h.project, h.bytes, h.objects\n"
    "               FROM unnest(v_held, v_held_bytes, v_held_objects)\n"
    "                    AS h(project, bytes, objects)\n"
    "              ORDER BY h.project LOOP\n"
    "        INSERT INTO holding_stripes AS s (project_id, resource, stripe, usage)\n"
    "        VALUES (r.project, 'bytes', p_stripe, r.bytes),\n"
    "               (r.project, 'objects', p_stripe, r.objects)\n"
    "        ON CONFLICT (project_id, resource, stripe)\n"
    "        DO UPDATE SET usage = s.usage + EXCLUDED.usage;\n"
    "    END LOOP;\n"
    "END\n")
assert PUT_VERSIONS_V13.count(_BATCH_DECLARE_V13) == 1
assert PUT_VERSIONS_V13.count(_BATCH_CALL_V13) == 1
assert PUT_VERSIONS_V13.count(_BATCH_ARGS_V13) == 1
assert PUT_VERSIONS_V13.count(_BATCH_ITEM_END_V13) == 1
PUT_VERSIONS_V16 = (PUT_VERSIONS_V13.replace(_BATCH_DECLARE_V13, _BATCH_DECLARE_V16)
                    .replace(_BATCH_CALL_V13, _BATCH_CALL_V16)
                    .replace(_BATCH_ARGS_V13, _BATCH_ARGS_V16)
                    .replace(_BATCH_ITEM_END_V13, _BATCH_ITEM_END_V16))
FUNCTIONS_V16 = (HOLD_STRIPED_V16, PUT_VERSION_ITEM_V16, PUT_VERSIONS_V16)
