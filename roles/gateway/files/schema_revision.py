"""Print "current" when the database is at the installed code's Alembic head(s), else "behind".

Read-only probe run by the gateway role with the venv's interpreter to decide whether
`llm-gateway migrate` has work to do. The database URL (the owner's) comes on stdin, so it
appears in no command line or environment.
"""

import sys

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from llm_gateway.db import normalize_url

config = Config()
config.set_main_option("script_location", "llm_gateway:migrations")
heads = set(ScriptDirectory.from_config(config).get_heads())
engine = create_engine(
    normalize_url(sys.stdin.readline().strip()),
    poolclass=pool.NullPool,
    connect_args={"application_name": "llm-gateway-migrate"},
)
with engine.connect() as connection:
    current = set(MigrationContext.configure(connection).get_current_heads())
engine.dispose()
print("current" if current == heads else "behind")
