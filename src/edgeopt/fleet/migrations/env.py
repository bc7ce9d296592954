"""Alembic's entry point for the fleet database. The store runs it on the connection it opened
(config.attributes["connection"]), inside its own transaction; there is no alembic.ini."""

from alembic import context

from edgeopt.fleet.tables import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
