"""The tamper-evident ledger: canonical entries (``entry``), group-commit appends (``writer``) and
verification (``verify``). Format: see ``opsgate.ledger.entry`` and docs/ledger.md."""
