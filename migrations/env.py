"""Alembic environment: the URL comes from MedGate's settings unless the caller set one."""

from alembic import context
from sqlalchemy import pool

from app.config import get_settings
from app.db.models import Base
from app.db.session import get_engine

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().db_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        from sqlalchemy import create_engine

        engine = (create_engine(url, poolclass=pool.NullPool) if not url.startswith("sqlite")
                  else get_engine(url))
        with engine.connect() as connection:
            _run(connection)
        if not url.startswith("sqlite"):
            engine.dispose()
    else:
        _run(connectable)


def _run(connection) -> None:  # noqa: ANN001
    # SQLite cannot ALTER most things: batch mode copies the table, so downgrades work there too.
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
