"""Authentication, authorisation and (later) secrets, redaction and at-rest encryption."""
