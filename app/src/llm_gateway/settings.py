"""Process environment (12-factor): where the config lives, how to reach the database, secrets."""

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

DRIVER = "postgresql+psycopg2"
NO_DATABASE = "no database configured (set PGHOST/PGDATABASE or DATABASE_URL)"


class DatabaseEnvError(ValueError):
    """The environment names the database in two ways at once."""


class EnvSettings(BaseSettings):
    """Values that differ per host and must not live in config.yaml (or may be overridden here)."""

    # hide_input_in_errors: a value in the wrong variable may be a password.
    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    # SecretStr: the URL carries the password; repr/str never reveal it.
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    # libpq's own variables (field names match them case-insensitively), written as they
    # are: nothing to percent-encode.
    pghost: str | None = None
    pgport: int | None = Field(default=None, ge=1, le=65535)
    pgdatabase: str | None = None
    pguser: str | None = None
    pgpassword: SecretStr | None = None
    pgsslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = None
    pgsslrootcert: str | None = None
    config_path: Path = Field(
        default=Path("config.yaml"),
        validation_alias=AliasChoices("GATEWAY_CONFIG", "config_path"),
    )
    spool_dir: Path = Field(
        default=Path("spool"),
        validation_alias=AliasChoices("GATEWAY_SPOOL_DIR", "spool_dir"),
    )
    master_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GATEWAY_MASTER_KEY", "master_key")
    )

    def sqlalchemy_url(self, password: str | None = None) -> URL | None:
        """The database URL, built here and nowhere else; None when no database is set.

        From DATABASE_URL as given (``postgres://`` and ``postgresql://`` mean psycopg2),
        or from PGHOST/PGDATABASE and the other PG* variables. Setting both is an error:
        which database a migration changes must never depend on a precedence rule.
        ``password`` (e.g. read from stdin) replaces the configured one.
        """
        from_parts = bool(self.pghost or self.pgdatabase)
        if self.database_url and from_parts:
            raise DatabaseEnvError(
                "DATABASE_URL and PGHOST/PGDATABASE are both set; set only one of them"
            )
        if self.database_url:
            url = make_url(self.database_url.get_secret_value())
            if url.drivername in ("postgres", "postgresql"):
                url = url.set(drivername=DRIVER)
        elif from_parts:
            tls = {"sslmode": self.pgsslmode, "sslrootcert": self.pgsslrootcert}
            url = URL.create(
                DRIVER,
                username=self.pguser,
                password=self.pgpassword.get_secret_value() if self.pgpassword else None,
                host=self.pghost,
                port=self.pgport,
                database=self.pgdatabase,
                query={name: value for name, value in tls.items() if value},
            )
        else:
            return None
        return url if password is None else url.set(password=password)
