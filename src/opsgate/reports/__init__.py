"""Operator reports: the daily security report and the pre-production readiness audit."""
