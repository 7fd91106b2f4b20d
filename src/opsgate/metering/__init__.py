"""Price table, exact cost metering, budgets and rate limits."""
