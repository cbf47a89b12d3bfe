"""Where a module's code comes from, besides an installed entry point.

``git+URL[@ref]``
    a git repository; the server resolves the ref to a commit before the job is queued, and the
    commit is what is recorded and built.
``pip:REQUIREMENT`` (or a requirement with a version, ``name==1.2``, ``name[extra]>=2``)
    a package from the index the runner's ``uv`` uses.
``wheel:ARTIFACT``
    a wheel or sdist stored as an artifact (``forgehub module push ./folder`` makes one);
    recorded by its digest.

Anything else is the name of an installed or catalogued module. Nothing here runs a shell; a
user's URL reaches ``git`` only as one argument after ``--``, with ``GIT_ALLOW_PROTOCOL``
limiting it to the network protocols (``file`` only where an admin allows it).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import urlsplit

COMMIT = re.compile(r"[0-9a-f]{40}")
GIT_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}")
# a PEP 508 requirement without markers or URLs: name, extras, version clauses
REQUIREMENT = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})(\[[A-Za-z0-9._,-]{1,100}\])?"
    r"(\s*(===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]{1,64})"
    r"(\s*,\s*(===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]{1,64}){0,5}"
)
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ARCHIVE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\.(whl|tar\.gz|zip)")
NET_PROTOCOLS = ("https", "http", "git")


class SourceError(ValueError):
    """A module source that cannot be used; the message says why."""


@dataclass(frozen=True)
class Source:
    kind: Literal["git", "pip", "wheel"]
    value: str  # git: the repository URL; pip: the requirement; wheel: the artifact reference
    ref: str = ""  # git: the ref asked for
    commit: str = ""  # git: the commit it resolved to
    filename: str = ""  # wheel: the archive's file name

    def __str__(self) -> str:
        if self.kind == "git":
            return f"git+{self.value}@{self.commit or self.ref or 'HEAD'}"
        return f"{self.kind}:{self.value}"

    @property
    def exact(self) -> bool:
        """Names one exact piece of code (a commit, a digest, an ``==`` pin)."""
        if self.kind == "git":
            return bool(self.commit)
        if self.kind == "wheel":
            return self.value.startswith("sha256:")
        return "==" in self.value

    @property
    def default_name(self) -> str:
        """The module name to use when none is given: the repository's, the package's."""
        if self.kind == "git":
            base = urlsplit(self.value).path.rstrip("/").rsplit("/", 1)[-1]
            base = base.removesuffix(".git")
        elif self.kind == "pip":
            m = REQUIREMENT.match(self.value) or PLAIN_NAME.match(self.value)
            base = m.group("name") if m and "name" in m.groupdict() else self.value
        else:
            base = (self.filename or "module").split("-", 1)[0]
        base = re.sub(r"[^a-z0-9_.-]+", "-", base.lower()).strip("-._")
        return base[:64] or "module"


def parse(text: str) -> Source | None:
    """The source ``text`` names, or None for a plain module name. Raises SourceError for a
    source that is malformed or not allowed."""
    text = text.strip()
    if text.startswith("git+"):
        url, ref = _split_ref(text[4:])
        check_git_url(url)
        if ref and not GIT_REF.fullmatch(ref):
            raise SourceError(f"git ref {ref[:80]!r}: letters, digits and ._/+- only")
        if ref and COMMIT.fullmatch(ref):
            return Source("git", url, ref=ref, commit=ref)
        return Source("git", url, ref=ref)
    if text.startswith("pip:"):
        req = text[4:].strip()
        if not (REQUIREMENT.fullmatch(req) or PLAIN_NAME.fullmatch(req)):
            raise SourceError(
                f"pip requirement {req[:80]!r}: a name with extras and version clauses only "
                "(no URLs, paths or options)"
            )
        return Source("pip", req)
    if text.startswith("wheel:"):
        ref = text[6:].strip()
        if not ref:
            raise SourceError("wheel: needs an artifact (sha256:… or name[:tag])")
        return Source("wheel", ref)
    if REQUIREMENT.fullmatch(text):
        return Source("pip", text)
    return None


def _split_ref(rest: str) -> tuple[str, str]:
    """``URL@ref`` → (URL, ref); an ``@`` in the URL's user part is not a ref."""
    scheme_end = rest.find("://")
    at = rest.rfind("@")
    if at > rest.find("/", scheme_end + 3 if scheme_end >= 0 else 0) >= 0:
        return rest[:at], rest[at + 1 :]
    return rest, ""


def allowed_protocols() -> tuple[str, ...]:
    """``git`` transports a source may use; ``file`` when ``FORGEHUB_ALLOW_FILE_SOURCES`` is set
    (an admin's choice: a file URL reads the server machine's disk)."""
    extra = ("file",) if os.environ.get("FORGEHUB_ALLOW_FILE_SOURCES") == "1" else ()
    return NET_PROTOCOLS + extra


def check_git_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in allowed_protocols():
        raise SourceError(
            f"git source {url[:100]!r}: use an https://, http:// or git:// URL"
            + (" (file:// is not allowed on this server)" if parts.scheme == "file" else "")
        )
    if parts.scheme != "file" and not parts.hostname:
        raise SourceError(f"git source {url[:100]!r} has no host")
    if parts.password:
        raise SourceError("put no password in a git URL: it would be stored and shown in clear")
    if any(c.isspace() for c in url) or url.startswith("-"):
        raise SourceError(f"git source {url[:100]!r}: not a URL")


def git_env() -> dict[str, str]:
    """The environment git (and uv's git) runs with: no prompts, only the allowed transports."""
    return {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": ":".join(allowed_protocols()),
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def resolve(src: Source, timeout: float = 30.0) -> Source:
    """A git source with its ref resolved to a commit (``git ls-remote``); others unchanged."""
    if src.kind != "git" or src.commit:
        return src
    ref = src.ref or "HEAD"
    try:
        out = subprocess.run(
            ["git", "ls-remote", "--", src.value, ref, f"{ref}^{{}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=git_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"cannot reach {src.value}: {exc}") from exc
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["git ls-remote failed"])[-1]
        raise SourceError(f"cannot read {src.value}: {why[:200]}")
    refs: dict[str, str] = {}
    for line in out.stdout.splitlines():
        sha, _, name = line.partition("\t")
        refs[name] = sha
    for name in (
        f"refs/tags/{ref}^{{}}",  # an annotated tag: the commit it points at
        f"refs/tags/{ref}",
        f"refs/heads/{ref}",
        ref,
    ):
        if COMMIT.fullmatch(refs.get(name, "")):
            return replace(src, commit=refs[name])
    raise SourceError(f"{src.value} has no branch or tag {ref!r}")


def archive_name(filename: str) -> str:
    """A wheel's or sdist's file name, checked (it becomes a path on the runner)."""
    name = os.path.basename(filename or "")
    if not ARCHIVE.fullmatch(name) or ".." in name:
        raise SourceError(
            f"{filename[:100]!r} is not a wheel or sdist file name (name-version….whl / .tar.gz)"
        )
    return name
