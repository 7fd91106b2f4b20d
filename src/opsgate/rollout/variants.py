"""Variants: what serves an operation — a route (provider/model chain) plus a prompt version.

Every operation has the implicit variant :data:`DEFAULT_VARIANT`: its route from ``opsgate.toml``
(``[routes.<op>]`` over ``[routes.default]``) and the package's prompt
:func:`~opsgate.operations.prompts.default_version`. An operator declares more in
``[variants.<operation>.<name>]`` (``chain``, unset = the route's chain; ``prompt``, a version
id; timeouts and attempts always come from the route)::

    prompts_dir = "prompts"                 # prompts/email-classify/v2.txt

    [variants.email-classify.flash-v2]
    chain = ["gemini/gemini-3.8-flash"]
    prompt = "v2"

An operation has one live variant (``default`` until a variant rollout promotes another) and at
most one candidate (the variant of its unfinished variant rollout). The ledger records a call's
variant name and its prompt's version id and SHA-256, never the prompt text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from datetime import datetime

from opsgate.config import Settings
from opsgate.operations import prompt_catalogue
from opsgate.operations.prompts import (
    PromptCatalogue,
    PromptConfigError,
    PromptVersion,
    default_version,
    package_prompt,
)
from opsgate.rollout.errors import VariantNotFound
from opsgate.routing.effective import PriceLookup
from opsgate.routing.policy import BUILTIN_PROVIDERS, RouteConfigError, RoutePolicy, Target, parse_target

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "default"
"""The implicit variant of every operation: its configured route and the package's prompt."""
VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")


class VariantConfigError(RouteConfigError):
    """The ``[variants.*]`` tables or the prompt versions cannot be served; ``problems`` holds one
    line per problem (a :class:`RouteConfigError`, so start-up refuses it the same way)."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of serving ``operation``: ``policy`` (the route, with this variant's chain) and
    ``prompt`` (the system prompt version it renders)."""

    operation: str
    name: str
    policy: RoutePolicy
    prompt: PromptVersion

    def targets(self) -> list[str]:
        """The chain as ``"provider/model"`` strings, in order of preference."""
        return [f"{t.provider}/{t.model}" for t in self.policy.chain]

    def ledger_ref(self) -> dict[str, Any]:
        """What the ledger records of the variant: ``{"variant", "prompt": {"version", "sha256"}}``."""
        return {"variant": self.name, "prompt": self.prompt.ledger_ref()}

    def to_json(self) -> dict[str, Any]:
        """API/CLI shape: name, chain, prompt version id, digest and source."""
        return {"operation": self.operation, "name": self.name, "chain": self.targets(),
                "prompt": {**self.prompt.ledger_ref(), "source": self.prompt.source}}


@dataclass(frozen=True, slots=True)
class VariantBook:
    """Every variant the configuration declares, by operation and name (``default`` included)."""

    variants: Mapping[str, Mapping[str, Variant]]

    def get(self, operation: str, name: str) -> Variant:
        """One variant; :class:`VariantNotFound` (404) naming the operation's variants otherwise."""
        found = self.variants.get(operation, {}).get(name)
        if found is None:
            known = ", ".join(sorted(self.variants.get(operation, {}))) or "none (unknown operation)"
            raise VariantNotFound(f"{operation} has no variant {name!r}; its variants: {known}")
        return found

    def serving(self, operation: str, name: str) -> Variant:
        """The variant ``name`` the rollout state assigns; when the configuration no longer
        declares it (a variant removed from ``opsgate.toml`` while assigned), ``default``, logged."""
        found = self.variants.get(operation, {}).get(name)
        if found is None:
            log.warning("%s: variant %r is assigned but not configured; serving %r", operation, name,
                        DEFAULT_VARIANT)
            return self.variants[operation][DEFAULT_VARIANT]
        return found

    def of(self, operation: str) -> list[Variant]:
        """The operation's variants, ``default`` first, then by name."""
        found = self.variants.get(operation, {})
        return sorted(found.values(), key=lambda v: (v.name != DEFAULT_VARIANT, v.name))

    def chains(self) -> list[str]:
        """Every ``"provider/model"`` any variant may call (prices must cover them all)."""
        return sorted({t for ops in self.variants.values() for v in ops.values() for t in v.targets()})

    def targets(self) -> set[Target]:
        """Every target any variant may call (the router keeps a breaker for each)."""
        return {t for ops in self.variants.values() for v in ops.values() for t in v.policy.chain}


def default_book(policies: Mapping[str, RoutePolicy]) -> VariantBook:
    """Only the ``default`` variant of each operation in ``policies`` (the package's prompts)."""
    return VariantBook({op: {DEFAULT_VARIANT: Variant(op, DEFAULT_VARIANT, policy, package_prompt(op))}
                        for op, policy in policies.items()})


def checked_variants(settings: Settings, policies: Mapping[str, RoutePolicy], prices: PriceLookup,
                     at: datetime) -> VariantBook:
    """The variants of ``settings`` over the route ``policies`` with the package's and the
    operator's prompt versions (``settings.prompts_dir``); :class:`VariantConfigError` listing
    every problem of the prompts, the ``[variants.*]`` tables and their targets' prices at ``at``."""
    try:
        prompts = prompt_catalogue(settings.prompts_dir)
    except PromptConfigError as exc:
        raise VariantConfigError(exc.problems) from None
    book = build_book(settings, policies, prompts)
    unpriced = [t for t in book.chains()
                if prices.lookup(parse_target(t).provider, parse_target(t).model, at) is None]
    if unpriced:
        raise VariantConfigError([f"variant target {t!r}: no price (add [prices.\"{t}\"] with input and "
                                  "output in USD per million tokens)" for t in unpriced])
    return book


def build_book(settings: Settings, policies: Mapping[str, RoutePolicy], prompts: PromptCatalogue) -> VariantBook:
    """``default`` plus the ``[variants.*]`` tables of ``settings``. Raises
    :class:`VariantConfigError` listing every problem: an unknown operation, a bad or reserved
    name, an unknown prompt version, a target naming an unknown provider."""
    problems: list[str] = []
    book = {op: dict(ops) for op, ops in default_book(policies).variants.items()}
    known_providers = set(BUILTIN_PROVIDERS) | set(settings.providers)
    for op, declared in settings.variants.items():
        if op not in policies:
            problems.append(f"variants {op!r}: no such operation ({', '.join(sorted(policies))})")
            continue
        for name, cfg in declared.items():
            where = f"variant {op}/{name}"
            if name == DEFAULT_VARIANT or not VARIANT_NAME.match(name):
                problems.append(f"{where}: the name must match {VARIANT_NAME.pattern} and not be "
                                f"{DEFAULT_VARIANT!r} (the implicit variant)")
                continue
            chain = tuple(parse_target(t) for t in cfg.chain) if cfg.chain else policies[op].chain
            problems += [f"{where}, target '{t.provider}/{t.model}': unknown provider {t.provider!r}"
                         for t in chain if t.provider not in known_providers]
            try:
                prompt = prompts.get(op, cfg.prompt or default_version(op))
            except KeyError as exc:
                problems.append(f"{where}: {exc.args[0]}")
                continue
            book[op][name] = Variant(op, name, replace(policies[op], chain=chain), prompt)
    if problems:
        raise VariantConfigError(problems)
    return VariantBook(book)
