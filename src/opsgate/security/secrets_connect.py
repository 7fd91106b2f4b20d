"""1Password secret references resolved through 1Password Connect's REST API over aiohttp.

A reference is ``op://<vault>/<item>/[<section>/]<field>`` (1Password secret reference syntax).
Requests (Connect API, ``Authorization: Bearer $OP_CONNECT_TOKEN`` against ``$OP_CONNECT_HOST``):
``GET /v1/vaults?filter=title eq "<vault>"``, ``GET /v1/vaults/{vault_id}/items?filter=title eq
"<item>"``, ``GET /v1/vaults/{vault_id}/items/{item_id}``; the field is the one whose ``label``
matches (and whose section's ``label`` matches when a section is named).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from opsgate.security.errors import SecretNotFound, SecretUnavailable


@dataclass(frozen=True)
class OpReference:
    """A parsed ``op://vault/item/[section/]field`` reference."""

    vault: str
    item: str
    section: str | None
    field: str

    @classmethod
    def parse(cls, ref: str) -> OpReference:
        """Parse ``ref``; ``SecretNotFound`` naming the reference when it is malformed."""
        parts = ref.removeprefix("op://").split("/") if ref.startswith("op://") else []
        if len(parts) not in (3, 4) or not all(parts):
            raise SecretNotFound(f"malformed 1Password reference {ref!r}")
        section = parts[2] if len(parts) == 4 else None
        return cls(parts[0], parts[1], section, parts[-1])

    def __str__(self) -> str:
        middle = f"{self.section}/" if self.section else ""
        return f"op://{self.vault}/{self.item}/{middle}{self.field}"


@dataclass(frozen=True)
class ConnectValue:
    """A resolved field: its ``value`` and the item's ``updated_at`` (UTC) for age checks."""

    value: str
    updated_at: datetime | None


class ConnectClient:
    """Read fields from a 1Password Connect server at ``host`` with bearer ``token``."""

    def __init__(self, session: aiohttp.ClientSession, host: str, token: str) -> None:
        self._session, self._host, self._token = session, host.rstrip("/"), token

    async def resolve(self, ref: OpReference) -> ConnectValue:
        """The field's value; ``SecretNotFound`` (naming the reference) when the vault, item or
        field does not exist, ``SecretUnavailable`` when Connect cannot be reached or refuses."""
        vault = await self._one("/v1/vaults", ref.vault, ref)
        summary = await self._one(f"/v1/vaults/{vault['id']}/items", ref.item, ref)
        item = await self._get(f"/v1/vaults/{vault['id']}/items/{summary['id']}", ref)
        sections = {s.get("id"): s.get("label") for s in item.get("sections", [])}
        for field in item.get("fields", []):
            in_section = sections.get((field.get("section") or {}).get("id"))
            if field.get("label") == ref.field and (ref.section is None or in_section == ref.section):
                if "value" not in field:
                    break
                updated = item.get("updatedAt")
                when = datetime.fromisoformat(updated.replace("Z", "+00:00")) if updated else None
                return ConnectValue(field["value"], when)
        raise SecretNotFound(f"1Password reference {ref} names no field with a value")

    async def _one(self, path: str, title: str, ref: OpReference) -> dict[str, Any]:
        found = await self._get(path, ref, params={"filter": f'title eq "{title}"'})
        if not isinstance(found, list) or not found:
            raise SecretNotFound(f"1Password reference {ref}: {title!r} not found")
        item: dict[str, Any] = found[0]
        return item

    async def _get(self, path: str, ref: OpReference, params: dict[str, str] | None = None) -> Any:
        """The JSON body of a Connect API GET (an item, a list of items or vaults)."""
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with self._session.get(self._host + path, params=params, headers=headers) as resp:
                if resp.status == 404:
                    raise SecretNotFound(f"1Password reference {ref}: not found")
                if resp.status != 200:
                    raise SecretUnavailable(f"1Password Connect answered {resp.status} for {ref}")
                return await resp.json()
        except aiohttp.ClientError as exc:
            raise SecretUnavailable(f"1Password Connect unreachable ({type(exc).__name__})") from None
