"""CLI of the privacy manifest (registered by :mod:`opsgate.cli`):

``opsgate privacy manifest [--json]``
    per operation: what is sent to a provider, what is clipped at what length, and what is masked
    or pseudonymised, under the deployed settings (docs/privacy.md holds the default's table).
    Exit 2 when the settings name an unknown operation.
"""

from __future__ import annotations

import json

import typer

from opsgate.config import Settings
from opsgate.operations.manifest import manifest, to_json, to_markdown
from opsgate.operations.privacy import PrivacyPolicy
from opsgate.security.errorline import fail

privacy_app = typer.Typer(
    help="What leaves the machine: the privacy manifest.", no_args_is_help=True
)


@privacy_app.command("manifest")
def manifest_command(
    as_json: bool = typer.Option(False, "--json", help="JSON rows instead of the Markdown table."),
) -> None:
    """Print per operation what is sent, clipped, masked and pseudonymised (deployed settings)."""
    try:
        policy = PrivacyPolicy.from_settings(Settings())
    except ValueError as exc:
        fail(str(exc))
    rows = manifest(policy)
    typer.echo(json.dumps(to_json(rows), indent=2) if as_json else to_markdown(rows))
