"""opsgate: a governed gateway that puts an app's AI operations into production safely."""

__version__ = "0.1.0"
