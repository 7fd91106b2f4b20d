"""Versioned system prompts: data the operations render, not code.

Layout (the package's versions and an operator's alike): ``<dir>/<operation>/<version>.txt``, one
file per operation and version, UTF-8. The package ships ``v1`` of every operation (this
directory); an operator adds versions from the directory named by ``prompts_dir`` in
``opsgate.toml``. A version id is 1-32 characters of ``a-z 0-9 . _ -`` starting with a letter or
digit; an operator version may not reuse a package version's id (one id, one text).

A file is a :class:`string.Template`: ``${name}`` is replaced by a value the operation computes
(:attr:`opsgate.operations.base.Operation.prompt_fields` lists the names each operation offers),
``$$`` is a literal ``$``; one final newline of the file is not part of the prompt. The security
rule about data blocks (:data:`opsgate.operations.common.DATA_RULE`) is appended in code to every
prompt, whatever its version says.

A version is identified by its id and the SHA-256 of its file's bytes (:attr:`PromptVersion.sha256`):
the ledger records those two, never the text.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_VERSION = "v1"
"""The version an operation renders when nothing else is chosen, unless :data:`DEFAULT_VERSIONS`
names a later package version for it."""
DEFAULT_VERSIONS: Mapping[str, str] = {"email-compose": "v1.1", "email-respond": "v1.1"}
"""Operations whose default is a later package version. A shipped version's text never changes
(one id, one text: the ledger's prompt hashes stay comparable across releases); a new text is a new
id. ``v1.1`` of the drafts states the per-request draft length (``${max_words}``,
``${max_questions}``, issue 16), where ``v1`` said "at most 5" open questions whatever the length."""
VERSION_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")


class PromptConfigError(ValueError):
    """The prompt versions cannot be served; ``problems`` holds one line per file or version."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class PromptVersion:
    """One prompt version of one operation: its ``template`` text, the SHA-256 hex of the file's
    bytes and its ``source`` (``package`` or the operator directory's path)."""

    operation: str
    version: str
    template: str
    sha256: str
    source: str

    def render(self, fields: Mapping[str, object]) -> str:
        """The system prompt with ``fields`` substituted; ``KeyError`` for a placeholder without a
        value (prevented at load time by :func:`load_catalogue`'s check)."""
        return _render(self.template, tuple((k, str(v)) for k, v in fields.items()))

    def ledger_ref(self) -> dict[str, str]:
        """``{"version", "sha256"}``: what the ledger records of the prompt (never its text)."""
        return {"version": self.version, "sha256": self.sha256}


@functools.lru_cache(maxsize=256)
def _render(template: str, fields: tuple[tuple[str, str], ...]) -> str:
    """``template`` with ``fields`` (``(placeholder, text)`` pairs) substituted. Remembered:
    most calls of an operation render the same fields (a tone, a length), and the same string
    object lets :meth:`opsgate.operations.privacy.PrivacyPolicy.minimise` find it without
    hashing or comparing its text again (issue 21)."""
    return Template(template).substitute(dict(fields))


@dataclass(frozen=True, slots=True)
class PromptCatalogue:
    """Every known prompt version, by ``(operation, version)``."""

    versions: Mapping[tuple[str, str], PromptVersion]

    def get(self, operation: str, version: str) -> PromptVersion:
        """One version; ``KeyError`` naming the operation's known versions when it does not exist."""
        try:
            return self.versions[(operation, version)]
        except KeyError:
            known = ", ".join(self.of(operation)) or "none"
            raise KeyError(f"{operation} has no prompt version {version!r} (known: {known})") from None

    def of(self, operation: str) -> list[str]:
        """The version ids of ``operation``, sorted."""
        return sorted(v for op, v in self.versions if op == operation)


def read_version(operation: str, path: Path, source: str) -> PromptVersion:
    """The :class:`PromptVersion` in ``path`` (``<operation>/<version>.txt``); ``OSError`` and
    ``UnicodeDecodeError`` propagate."""
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    return PromptVersion(operation, path.stem, text.removesuffix("\n"), hashlib.sha256(raw).hexdigest(), source)


def default_version(operation: str) -> str:
    """The package version ``operation`` renders when no variant chooses one."""
    return DEFAULT_VERSIONS.get(operation, DEFAULT_VERSION)


@functools.cache
def package_prompt(operation: str, version: str | None = None) -> PromptVersion:
    """A version shipped in the package (cached), by default :func:`default_version`'s;
    ``FileNotFoundError`` when there is none."""
    version = version or default_version(operation)
    return read_version(operation, PACKAGE_DIR / operation / f"{version}.txt", "package")


def load_catalogue(fields: Mapping[str, Iterable[str]], operator_dir: Path | None = None) -> PromptCatalogue:
    """The package's versions plus ``operator_dir``'s, for the operations in ``fields``
    (``{operation: placeholder names it offers}``).

    Raises :class:`PromptConfigError` listing every problem: a missing operator directory, a
    subdirectory naming no operation, a bad version id, a file that is not UTF-8, a placeholder
    the operation does not offer or a malformed ``$``, an operator version reusing a package id.
    """
    versions: dict[tuple[str, str], PromptVersion] = {}
    problems: list[str] = []
    for op in fields:
        for path in sorted((PACKAGE_DIR / op).glob("*.txt")):
            versions[(op, path.stem)] = read_version(op, path, "package")
    if operator_dir is not None:
        problems += _operator_versions(operator_dir, fields, versions)
    for (op, version), prompt in versions.items():
        problems += _template_problems(prompt, frozenset(fields[op]))
    if problems:
        raise PromptConfigError(problems)
    return PromptCatalogue(versions)


def _operator_versions(directory: Path, fields: Mapping[str, Iterable[str]],
                       versions: dict[tuple[str, str], PromptVersion]) -> list[str]:
    if not directory.is_dir():
        return [f"prompts_dir {str(directory)!r} is not a directory"]
    problems = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        if sub.name not in fields:
            problems.append(f"prompts_dir: {sub.name!r} is no operation ({', '.join(sorted(fields))})")
            continue
        for path in sorted(sub.glob("*.txt")):
            where = f"prompt {sub.name}/{path.name}"
            if not VERSION_ID.match(path.stem):
                problems.append(f"{where}: the version id must match {VERSION_ID.pattern}")
            elif (sub.name, path.stem) in versions:
                problems.append(f"{where}: version {path.stem!r} is shipped in the package; choose another id")
            else:
                try:
                    versions[(sub.name, path.stem)] = read_version(sub.name, path, str(directory))
                except UnicodeDecodeError:
                    problems.append(f"{where}: not UTF-8 text")
    return problems


def _template_problems(prompt: PromptVersion, offered: frozenset[str]) -> list[str]:
    where = f"prompt {prompt.operation}/{prompt.version}"
    template = Template(prompt.template)
    if not template.is_valid():
        return [f"{where}: a '$' that starts no ${{name}} placeholder (write $$ for a literal $)"]
    unknown = sorted(set(template.get_identifiers()) - offered)
    if unknown:
        return [f"{where}: unknown placeholder(s) {', '.join(unknown)} "
                f"(offered: {', '.join(sorted(offered)) or 'none'})"]
    if not prompt.template.strip():
        return [f"{where}: empty"]
    return []
