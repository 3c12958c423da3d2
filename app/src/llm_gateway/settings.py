"""Process environment (12-factor): where the config lives, how to reach the database, secrets."""

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class EnvSettings(BaseSettings):
    """Values that differ per host and must not live in config.yaml (or may be overridden here)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # SecretStr: the URL carries the password; repr/str never reveal it.
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
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
