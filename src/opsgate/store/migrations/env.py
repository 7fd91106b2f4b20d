"""Alembic environment: runs migrations online against ``sqlalchemy.url``."""

from alembic import context
from sqlalchemy import create_engine, pool

import opsgate.ledger.models  # noqa: F401  (registers the ledger checkpoint and anchor tables)
import opsgate.metering.models  # noqa: F401  (registers the metering tables)
import opsgate.rollout.models  # noqa: F401  (registers the rollout tables)
import opsgate.monitoring.models  # noqa: F401  (registers the monitoring tables)
import opsgate.security.models  # noqa: F401  (registers the security tables and security_event_counts)
from opsgate.store.models import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")
if url is None:
    raise RuntimeError("the Alembic config names no sqlalchemy.url")
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
