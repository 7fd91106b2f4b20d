"""The models each target has been seen to serve, read back at start-up.

A provider may answer a request for one model with another (``served_model``), and the call is
charged at the served model's price (:meth:`opsgate.pipeline.Gateway.price`). The budget
reservation of a target covers every model it may serve (:meth:`PriceBook.price_for`): the
configured ``[may_serve]`` models and the ones it was seen to serve, which the gateway learns
from every answer (:meth:`PriceBook.observe_served`) and, so that a restart does not forget them,
reads here from what earlier calls recorded: ``ai_operation_attempts`` (every billed request,
an unusable answer's too) and ``ai_operation_log`` (the call's last answer). Once, at start-up;
never per call.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, select, union

from opsgate.metering.models import ai_operation_attempts
from opsgate.metering.prices import PriceBook
from opsgate.store.models import ai_operation_log

log = logging.getLogger("opsgate.metering")


def learn_served_models(engine: Engine, book: PriceBook) -> int:
    """Feed ``book`` (:meth:`PriceBook.observe_served`) every distinct ``(provider, model,
    served_model)`` the operation log and the attempt rows hold where the served model is another
    priced model than the one requested. Returns how many were new to ``book``. Raises what the
    database raises (start-up then fails, like the other start-up reads)."""
    rows = []
    for table in (ai_operation_attempts, ai_operation_log):
        rows.append(select(table.c.provider, table.c.model, table.c.served_model).where(
            table.c.provider.is_not(None), table.c.model.is_not(None), table.c.served_model.is_not(None),
            table.c.served_model != table.c.model))
    with engine.connect() as conn:
        found = conn.execute(union(*rows)).all()
    learned = sum(book.observe_served(p, m, s) for p, m, s in found)
    if learned:
        log.info("budget reservations cover %d model(s) targets were seen to serve", learned)
    return learned
