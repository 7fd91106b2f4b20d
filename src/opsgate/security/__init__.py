"""Authentication, authorisation, sessions, secrets, redaction, at-rest encryption and the
security event counts."""
