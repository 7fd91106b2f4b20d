"""Feature toggles with Unleash-compatible bucketing, opt-ins, and the canary rollout controller.

Modules: ``bucketing`` (the hash), ``models`` (tables), ``toggles`` (pure evaluation and the
per-process snapshot), ``controller`` (the canary state machine), ``metrics`` (cohort metrics from
``ai_operation_log``), ``service`` (plain functions over an engine), ``views`` (admin and user API),
``cli`` (``opsgate toggles`` and ``opsgate rollout``).
"""
