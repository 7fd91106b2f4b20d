"""Routing: per-operation policies, retry waits, circuit breakers and the fallback chain."""
