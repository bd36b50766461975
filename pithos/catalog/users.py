"""Users and tokens in the catalog (the rows; keys and tokens are hashed by pithos.identity)."""

from __future__ import annotations

import time

from sqlalchemy import (
    and_,
    delete,
    insert,
    select,
    text,
    update,
)

from pithos.catalog import hot_statements as h
from pithos.catalog import schema as s
from pithos.catalog.records import (
    TokenOwner,
    UserCredentials,
    UserInfo,
)
from pithos.catalog.space import (
    recovery_write,
)
from pithos.core.errors import Conflict


class UsersMixin:
    """Users and tokens: a part of Catalog (pithos.catalog.catalog)."""

    def add_user(self, account: str, user: str, key_hash: str, admin: bool) -> UserInfo:
        with self._write() as conn:
            account_id = self._ensure_account(conn, account)
            existing = conn.execute(select(s.users.c.id).where(and_(
                s.users.c.account_id == account_id, s.users.c.name == user))).scalar()
            if existing is not None:
                conn.execute(update(s.users).where(s.users.c.id == existing)
                             .values(key_hash=key_hash, admin=admin, initial_key=False))
                conn.execute(delete(s.tokens).where(s.tokens.c.user_id == existing))
                user_id = int(existing)
            else:
                user_id = int(conn.execute(insert(s.users).values(
                    account_id=account_id, name=user, key_hash=key_hash, admin=admin,
                    created=time.time())).inserted_primary_key[0])
        return UserInfo(user_id, account, user, admin)

    def set_initial_key(self, account: str, user: str, key_hash: str,
                        admin: bool) -> UserInfo | None:
        """A server's start: on a catalog with no user, add this one with an initial key; if
        this user still has an initial key (never used to log in), replace it.  None when
        neither (the key is in use, or other users exist).  Atomic: of several nodes starting
        at once on an empty catalog, one adds its user (SQLite: the write lock; PostgreSQL: a
        table lock held until the commit)."""
        try:
            with self._write() as conn:
                if not self.is_sqlite:
                    conn.execute(text("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"))
                if conn.execute(select(s.users.c.id).limit(1)).first() is None:
                    account_id = self._ensure_account(conn, account)
                    user_id = int(conn.execute(insert(s.users).values(
                        account_id=account_id, name=user, key_hash=key_hash, admin=admin,
                        initial_key=True, created=time.time())).inserted_primary_key[0])
                    return UserInfo(user_id, account, user, admin)
                row = conn.execute(
                    select(s.users.c.id, s.users.c.admin).select_from(s.users.join(s.accounts))
                    .where(and_(s.accounts.c.name == account, s.users.c.name == user,
                                s.users.c.initial_key))).first()
                if row is None:
                    return None
                conn.execute(update(s.users).where(s.users.c.id == row.id)
                             .values(key_hash=key_hash))
                return UserInfo(int(row.id), account, user, bool(row.admin))
        except Conflict:  # another node's user came first
            return None

    @recovery_write
    def delete_user(self, account: str, user: str) -> bool:
        with self._write() as conn:
            found = conn.execute(select(s.users.c.id).select_from(s.users.join(s.accounts))
                                 .where(and_(s.accounts.c.name == account,
                                             s.users.c.name == user))).scalar()
            if found is None:
                return False
            conn.execute(delete(s.tokens).where(s.tokens.c.user_id == found))
            conn.execute(delete(s.users).where(s.users.c.id == found))
            return True

    def users(self) -> list[UserInfo]:
        with self._read() as conn:
            rows = conn.execute(select(s.users.c.id, s.accounts.c.name.label("account"),
                                       s.users.c.name, s.users.c.admin)
                                .select_from(s.users.join(s.accounts))
                                .order_by(s.accounts.c.name, s.users.c.name)).all()
        return [UserInfo(r.id, r.account, r.name, bool(r.admin)) for r in rows]

    def user_credentials(self, account: str, user: str) -> UserCredentials | None:
        with self._read() as conn:
            row = conn.execute(select(s.users.c.id, s.users.c.key_hash, s.users.c.admin)
                               .select_from(s.users.join(s.accounts))
                               .where(and_(s.accounts.c.name == account,
                                           s.users.c.name == user))).first()
        if row is None:
            return None
        return UserCredentials(UserInfo(row.id, account, user, bool(row.admin)), row.key_hash)

    @recovery_write
    def add_token(self, token_hash: str, user_id: int, expires: float,
                  project_id: str | None = None) -> None:
        """A token of the user, acting in `project_id` (None: its home project)."""
        with self._write() as conn:
            conn.execute(insert(s.tokens).values(token_hash=token_hash, user_id=user_id,
                                                 expires=expires, project_id=project_id))
            # The key has been used: the server stops showing (and replacing) it.
            conn.execute(update(s.users).where(and_(s.users.c.id == user_id,
                                                    s.users.c.initial_key))
                         .values(initial_key=False))
            # Expired tokens are of no use to anyone; drop a few on every login.
            old = select(s.tokens.c.token_hash).where(s.tokens.c.expires < time.time()).limit(100)
            conn.execute(delete(s.tokens).where(s.tokens.c.token_hash.in_(old)))

    @recovery_write
    def delete_token(self, token_hash: str) -> None:
        """Revoke a token (a signed-out UI session); an unknown one is no error."""
        with self._write() as conn:
            conn.execute(delete(s.tokens).where(s.tokens.c.token_hash == token_hash))

    def token_user(self, token_hash: str, now: float) -> TokenOwner | None:
        """The user a token (by its hash) authenticates at `now`, None if unknown or
        expired."""
        rows = self._fetch(h.TOKEN_USER, token_hash=token_hash, now=now)
        return h.token_user(rows[0]) if rows else None

