"""Least privilege for the PostgreSQL catalog: a writer role that owns the catalog database and nothing else, and a
reader role that can only SELECT.

- ``rlt_writer`` (``RLT_CATALOG_URL``): LOGIN, no SUPERUSER / CREATEDB / CREATEROLE / REPLICATION / BYPASSRLS; owner
  of the database ``rlt_catalog``, of its schemas and of every table DuckLake makes there (it creates tables as it
  goes: one per inlined-data table version), so runs can commit, create and evolve tables and take advisory locks.
- ``rlt_reader`` (``RLT_CATALOG_READER_URL``): LOGIN, the same NO attributes, CONNECT on ``rlt_catalog``, USAGE on
  its schemas, SELECT on their tables now and later (default privileges of the writer), and
  ``default_transaction_read_only = on``. ``rlt catalog sql``, ``rlt lineage``, ``rlt export`` connect as it: a
  query that reaches the server (it should not: infra/catalog/sql_guard.py) can read the catalog and nothing else: no
  ``pg_shadow``, no ``pg_read_file``, no write, no temporary table.
- PUBLIC loses CONNECT and TEMP on the catalog database, CONNECT on ``postgres``, and CREATE on the schemas.

The cluster's bootstrap superuser (``rlt``: initdb's ``--username``; PostgreSQL forbids taking SUPERUSER from it)
administers: only ``rlt stack up`` uses it, with the password in ``_services/postgres/password``, never exported.
A stack made before these roles (clients connected as that superuser, which owned everything) is migrated by
``ensure`` on its next ``up``: the roles are created and ownership of the database and its objects moves to the
writer. Idempotent.

For a PostgreSQL you run yourself: docs/catalog-roles.md has the same statements to run once.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

WRITER, READER = "rlt_writer", "rlt_reader"
_NO_PRIVILEGES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"


def ensure(admin_params: dict[str, Any], database: str, writer_password: str, reader_password: str) -> list[str]:
    """Create or correct both roles and the grants (run as the cluster's superuser); returns what it changed, one
    line each (empty when everything was already in place). ``admin_params``: psycopg.connect keyword arguments
    without ``dbname``."""
    import psycopg
    from psycopg import sql

    changed: list[str] = []
    with psycopg.connect(dbname="postgres", autocommit=True, **admin_params) as con:
        for role, password in ((WRITER, writer_password), (READER, reader_password)):
            exists = con.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            con.execute(sql.SQL(f"{verb} ROLE {{}} WITH {_NO_PRIVILEGES} PASSWORD {{}}").format(
                sql.Identifier(role), sql.Literal(password)))
            if not exists:
                changed.append(f"created role {role}")
        con.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(READER)))
        owner = con.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                            (database,)).fetchone()
        if owner and owner[0] != WRITER:
            con.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database),
                                                                         sql.Identifier(WRITER)))
            changed.append(f"database {database}: owner {owner[0]} -> {WRITER}")
        db = sql.Identifier(database)
        con.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        con.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(READER)))
        con.execute("REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC")
    with psycopg.connect(dbname=database, autocommit=True, **admin_params) as con:
        changed += _own_and_grant(con)
    for line in changed:
        log.info("catalog roles: %s", line)
    return changed


def _own_and_grant(con: psycopg.Connection[Any]) -> list[str]:
    """Inside the catalog database: the writer owns every user schema and relation, the reader may read them."""
    from psycopg import sql

    changed: list[str] = []
    schemas = [r[0] for r in con.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'")]
    w, r = sql.Identifier(WRITER), sql.Identifier(READER)
    for schema in schemas:
        s = sql.Identifier(schema)
        con.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(s, w))
        con.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(s))
        con.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r))
    rows = con.execute(
        "SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')",
        (schemas,)).fetchall()
    kinds = {"S": "SEQUENCE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE"}
    moved = 0
    for schema, name, kind, owner in rows:
        if owner != WRITER:
            con.execute(sql.SQL(f"ALTER {kinds.get(kind, 'TABLE')} {{}}.{{}} OWNER TO {{}}").format(
                sql.Identifier(schema), sql.Identifier(name), w))
            moved += 1
    if moved:
        changed.append(f"{moved} relation(s) now owned by {WRITER}")
    for schema in schemas:
        s = sql.Identifier(schema)
        con.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, r))
        con.execute(sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, r))
        con.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}")
                    .format(w, s, r))
        con.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON SEQUENCES TO {}")
                    .format(w, s, r))
    return changed


def describe(admin_params: dict[str, Any]) -> dict[str, dict[str, Any]]:

    """Each role's attributes and what it owns (for tests and ``rlt stack status``-style checks)."""
    import psycopg

    with psycopg.connect(dbname="postgres", autocommit=True, **admin_params) as con:
        rows = con.execute("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, "
                           "rolconfig FROM pg_roles WHERE rolname = ANY(%s)", ([WRITER, READER],)).fetchall()
        dbs = con.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database").fetchall()
    out = {r[0]: {"superuser": r[1], "createrole": r[2], "createdb": r[3], "replication": r[4], "bypassrls": r[5],
                  "config": list(r[6] or []), "owns_databases": sorted(d for d, o in dbs if o == r[0])}
           for r in rows}
    return out
