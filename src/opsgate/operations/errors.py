"""Errors of the operations domain (see the catalogue in :mod:`opsgate.errors`)."""

from __future__ import annotations

from opsgate.providers.errors import ProviderError


class InvalidModelOutput(ProviderError):
    """The model's answer did not match the operation's schema, even after one repair request
    (see :mod:`opsgate.operations.repair`); 502 ``provider_bad_response``."""

    code = "provider_bad_response"
    status = 502
    title = "The AI provider's answer did not match the expected shape"
