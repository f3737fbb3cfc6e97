"""``poisonscan keys create|revoke|list``: API keys, written straight to the configured database.

The token is printed once by ``create`` and never stored (only its sha256).
Run them where the API's ``POISONSCAN_DATABASE_URL`` points (e.g. ``docker
compose exec api poisonscan keys create --tenant acme``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from poisonscan.runtime import migrate

QUOTA_OPTIONS = (
    ("--max-active-jobs", "max_active_jobs", "queued + running jobs at once"),
    ("--uploads-per-minute", "max_uploads_per_minute", "new datasets stored per minute"),
    ("--max-stored-bytes", "max_stored_bytes", "bytes of the datasets it stored"),
)


def _session() -> Any:
    from service.config import get_settings
    from service.db import get_sessionmaker, session_scope

    migrate()
    return session_scope(get_sessionmaker(get_settings().database_url))


def cmd_create(args: argparse.Namespace) -> int:
    from service import auth
    from service.errors import InvalidInput

    quotas = {field: getattr(args, field) for _, field, _ in QUOTA_OPTIONS}
    try:
        with _session() as session:
            created = auth.create(
                session,
                args.tenant,
                admin=args.admin,
                name=args.name,
                quotas={k: v for k, v in quotas.items() if v is not None},
            )
            key_id = created.key.id
    except InvalidInput as exc:
        print(f"poisonscan: error: {exc}", file=sys.stderr)
        return 2
    scope = "admin" if args.admin else "tenant"
    print(
        f"created key {key_id} ({scope}, tenant {args.tenant}); it is shown this once:",
        file=sys.stderr,
    )
    print(created.token)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from service import auth
    from service.errors import NotFound

    try:
        with _session() as session:
            auth.revoke(session, args.key_id)
    except NotFound as exc:
        print(f"poisonscan: error: {exc}", file=sys.stderr)
        return 1
    print(f"revoked key {args.key_id}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    del args
    from service import auth

    with _session() as session:
        rows = [_row(key) for key in auth.list_all(session)]
    print("\t".join(("id", "tenant", "scope", "name", "created", "revoked", "quotas")))
    for row in rows:
        print("\t".join(row))
    return 0


def _row(key: Any) -> tuple[str, ...]:
    quotas = ",".join(
        f"{field}={getattr(key, field)}"
        for _, field, _ in QUOTA_OPTIONS
        if getattr(key, field) is not None
    )
    return (
        key.id,
        key.tenant,
        "admin" if key.admin else "tenant",
        key.name or "-",
        key.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        key.revoked_at.strftime("%Y-%m-%dT%H:%M:%SZ") if key.revoked_at else "-",
        quotas or "defaults",
    )


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0 (0: no limit)")
    return value


def add_parsers(sub: Any) -> None:
    k = sub.add_parser("keys", help="API keys of the service (auth on: POISONSCAN_AUTH_ENABLED)")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    c = ksub.add_parser("create", help="make a key and print it (once)")
    c.add_argument("--tenant", required=True, help="the tenant whose rows the key sees")
    c.add_argument("--admin", action="store_true", help="see and act on every tenant's rows")
    c.add_argument("--name", help="a note: who or what uses the key")
    for flag, field, what in QUOTA_OPTIONS:
        c.add_argument(
            flag, dest=field, type=_non_negative, help=f"quota: {what} (default: settings)"
        )
    c.set_defaults(func=cmd_create)
    r = ksub.add_parser("revoke", help="revoke a key by its id (it stops working at once)")
    r.add_argument("key_id")
    r.set_defaults(func=cmd_revoke)
    ls = ksub.add_parser("list", help="every key: id, tenant, scope, name, dates, quotas")
    ls.set_defaults(func=cmd_list)
