"""``llm-gateway serve|migrate|check-config``."""

from __future__ import annotations

import argparse
import sys

from llm_gateway.config import ConfigError, load_config
from llm_gateway.settings import EnvSettings


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

    from llm_gateway.db import normalize_url

    env = EnvSettings()
    if env.database_url is None:
        print("migrate: DATABASE_URL is not set", file=sys.stderr)
        return 2
    cfg = Config()
    cfg.set_main_option("script_location", "llm_gateway:migrations")
    # configparser interpolation: a %-encoded password must be escaped.
    url = normalize_url(env.database_url.get_secret_value())
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, args.revision)
    print(f"migrate: database at revision {args.revision}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    env = EnvSettings()
    try:
        config = load_config(env, args.config)
    except ConfigError as exc:
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
    migrate = sub.add_parser("migrate", help="alembic upgrade (DATABASE_URL, owner role)")
    migrate.add_argument("revision", nargs="?", default="head")
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
