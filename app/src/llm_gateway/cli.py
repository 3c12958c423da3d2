"""``llm-gateway serve|migrate|check-config``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from llm_gateway.config import ConfigError, load_config
from llm_gateway.settings import NO_DATABASE, DatabaseEnvError, EnvSettings

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection

# Exit codes of `migrate` besides 0 (done; with --check: the database is current) and 1
# (an error, one line on stderr; e.g. the database cannot be reached).
EXIT_USAGE = 2  # no database configured, or configured twice; as argparse's usage errors
EXIT_BEHIND = 3  # --check: the schema is behind the code; `migrate` has work to do


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from llm_gateway.serving import uvicorn_options

    # One process (or uvicorn's own workers); production runs gunicorn with
    # llm_gateway.serving.GatewayWorker. Both serve with the same HTTP limits.
    uvicorn.run(
        "llm_gateway.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
        **uvicorn_options(),
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.exc import SQLAlchemyError

    from llm_gateway.db import driver_reason, migration_engine

    if args.check and args.revision != "head":
        print(
            "migrate: --check compares with the code's head(s); give no revision", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        password = _stdin_password() if args.password_stdin else None
        url = EnvSettings().sqlalchemy_url(password)
    except ValueError as exc:  # also pydantic's ValidationError
        print("migrate: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_USAGE
    if url is None:
        print(f"migrate: {NO_DATABASE}", file=sys.stderr)
        return EXIT_USAGE
    config = Config()
    config.set_main_option("script_location", "llm_gateway:migrations")
    try:
        # No pool: closing the connection leaves nothing open.
        connection = migration_engine(url).connect()
    except SQLAlchemyError as exc:
        reason = driver_reason(exc, url.password)
        print(f"migrate: cannot connect to the database: {reason}", file=sys.stderr)
        return 1
    with connection:
        if args.check:
            return _schema_check(config, connection)
        # Alembic runs on this connection, inside this transaction (env.py).
        config.attributes["connection"] = connection
        with connection.begin():
            command.upgrade(config, args.revision)
    print(f"migrate: database at revision {args.revision}")
    return 0


def _stdin_password() -> str:
    """The first line of stdin, so the password is on no command line or environment."""
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ValueError("--password-stdin: no password on the first line of stdin")
    return password


def _schema_check(config: Config, connection: Connection) -> int:
    """Compare the database's revision(s) with the code's head(s); change nothing."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(config)
    code = set(script.get_heads())
    database = set(MigrationContext.configure(connection).get_current_heads())
    if database == code:
        print(f"current: database at {_revisions(database)}")
        return 0
    unknown = database - {revision.revision for revision in script.walk_revisions()}
    if unknown:
        # Newer code migrated it (e.g. a rollback of the app): upgrading cannot help.
        print(
            f"migrate: database at {_revisions(unknown)}, which this code does not know",
            file=sys.stderr,
        )
        return 1
    print(f"behind: database at {_revisions(database)}, code at {_revisions(code)}")
    return EXIT_BEHIND


def _revisions(revisions: set[str]) -> str:
    return ",".join(sorted(revisions)) or "none"


def _check_config(args: argparse.Namespace) -> int:
    env = EnvSettings()
    try:
        config = load_config(env, args.config)
        env.sqlalchemy_url()  # the database named twice is a startup error too
    except (ConfigError, DatabaseEnvError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for name, deployments in sorted(config.deployments.items()):
        bases = ", ".join(d.api_base for d in deployments)
        print(f"model {name}: {len(deployments)} deployment(s) -> {bases}")
    print(f"keys: {', '.join(sorted(config.key_aliases.values())) or 'none'}")
    if config.ignored_keys:
        print(f"ignored (not implemented): {', '.join(config.ignored_keys)}")
    print(f"log_mode: {config.service.log_mode}; config OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the development server (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)
    migrate = sub.add_parser(
        "migrate", help="alembic upgrade as the schema owner (PG* variables or DATABASE_URL)"
    )
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.add_argument(
        "--check",
        action="store_true",
        help=f"change nothing: exit 0 if the database is at the code's head(s), {EXIT_BEHIND}"
        " if it is behind, 1 on an error",
    )
    migrate.add_argument(
        "--password-stdin",
        action="store_true",
        help="the password is the first line of stdin (overrides PGPASSWORD and the URL's)",
    )
    migrate.set_defaults(func=_migrate)
    check = sub.add_parser("check-config", help="validate config.yaml and exit")
    check.add_argument("--config", default=None, help="path (default: $GATEWAY_CONFIG)")
    check.set_defaults(func=_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
