"""Alembic environment. Normally driven by `Database.migrate()`, which passes its connection in
`config.attributes["connection"]`; run by hand (`alembic -c <ini>`), it uses `Settings()`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from stable_diffusion_api.models import Base


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from stable_diffusion_api.config import Settings
    from stable_diffusion_api.db import make_engine

    engine = make_engine(Settings().resolved_database_url)
    with engine.begin() as own_connection:
        run(own_connection)
    engine.dispose()
