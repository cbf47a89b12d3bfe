"""The admin's trust settings, applied to what users configure (docs/security.md).

* **Server compute.** Compute that runs on the server machine (``local``, Slurm without
  ``ssh_host``) runs code as the server's user: admins, and the users listed in
  ``server_compute_users``, may add such connections and run commands on them.
* **Local storage roots.** A ``local`` storage connection of a user must lie inside one of
  ``local_storage_roots``; an admin's may be anywhere. Nobody's may touch the data directory
  (the database, ``secret.keys``, ``admin.token``).
* **Egress.** A user's connection may not point at an address in ``egress_deny`` (by default
  loopback and link-local: the server's own services and cloud metadata endpoints). Admins
  are exempt. Host names are resolved when the connection is added and when it is tested.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from forgehub.auth import Principal
from forgehub.errors import Forbidden, Invalid
from forgehub.identity import authz


@dataclass(frozen=True)
class Policy:
    data_dir: Path
    server_compute_users: tuple[str, ...] = ()
    own_code_users: tuple[str, ...] = ("*",)
    local_storage_roots: tuple[Path, ...] = ()
    egress_deny: tuple[str, ...] = ()
    shared_dir: Path | None = None  # the servers' shared folder: as private as the data dir

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(
            data_dir=Path(settings.data_dir).resolve(),
            server_compute_users=tuple(settings.server_compute_users),
            own_code_users=tuple(settings.own_code_users),
            local_storage_roots=tuple(Path(p).resolve() for p in settings.local_storage_roots),
            egress_deny=tuple(settings.egress_deny),
            shared_dir=Path(settings.shared_dir).resolve() if settings.shared_dir else None,
        )

    # -- compute -------------------------------------------------------------------------------
    def may_use_server(self, principal: Principal) -> bool:
        return authz.can(principal, "compute.server", self)

    def may_run_own_code(self, principal: Principal) -> bool:
        """A module from the user's own source (git, wheel, pip) on the server machine; it
        always runs in the sandbox there."""
        return authz.can(principal, "compute.own_code", self)

    def check_url(self, principal: Principal, url: str) -> None:
        """Refuse a URL the server would fetch for a user (a git source) on a denied network."""
        from urllib.parse import urlsplit

        if not authz.can(principal, "egress.any", None):
            self._check_host(urlsplit(url).hostname or "")

    def compute_config(self, principal: Principal, kind: str, config: dict[str, Any]) -> None:
        """Refuse a compute connection the caller may not add."""
        from forgehub.compute import ComputeError, adapter_class

        try:
            cls = adapter_class(kind)
        except ComputeError:
            return  # the connection family reports unknown kinds
        if cls.runs_on_server(config) and not self.may_use_server(principal):
            raise Forbidden(
                f"a {kind!r} connection that runs on the server machine is for admins and the "
                "users they allow (server_compute_users); give ssh_host for a cluster's login node"
                if kind == "slurm"
                else f"{kind!r} compute runs on the server machine: for admins and the users "
                "they allow (server_compute_users)"
            )
        self.check_hosts(principal, cls, config)

    # -- storage -------------------------------------------------------------------------------
    def storage_config(
        self, principal: Principal, kind: str, config: dict[str, Any]
    ) -> dict[str, Any]:
        """The config to save, with a ``local`` path resolved; refuses what the caller may not
        reach."""
        if kind == "local":
            raw = config.get("path")
            if isinstance(raw, str) and raw.strip():
                path = self.local_root(principal, Path(raw))
                return {**config, "path": str(path)}
            return config
        from forgehub.storage import StorageError, adapter_class

        try:
            cls = adapter_class(kind)
        except StorageError:
            return config  # the connection family reports unknown kinds
        self.check_hosts(principal, cls, config)
        return config

    def local_root(self, principal: Principal, path: Path) -> Path:
        """``path`` resolved (symbolic links followed), if the caller may store there."""
        if not path.is_absolute():
            raise Invalid("config.path: a local folder must be an absolute path")
        real = path.expanduser().resolve()
        for data in (self.data_dir, self.shared_dir):
            if data is None or not (real == data or data in real.parents or real in data.parents):
                continue
            raise Forbidden(
                "config.path: the server's data or shared directory (and the folders above them) "
                "cannot be a storage connection"
            )
        if authz.can(principal, "storage.local", None):
            return real
        if any(real == root or root in real.parents for root in self.local_storage_roots):
            return real
        roots = ", ".join(str(r) for r in self.local_storage_roots) or "none are configured"
        raise Forbidden(
            f"config.path: local folders must lie inside the admin's local_storage_roots ({roots})"
        )

    # -- egress --------------------------------------------------------------------------------
    def check_hosts(self, principal: Principal, adapter: Any, config: dict[str, Any]) -> None:
        """Refuse, before any connection is made, a config of ``adapter`` (a storage or compute
        adapter class) that points at a denied network: on adding a connection and on testing
        it (a test's result would reveal what listens there)."""
        if authz.can(principal, "egress.any", None):
            return
        for host in adapter.hosts(config):
            self._check_host(host)

    @cached_property
    def _denied(self) -> tuple[Any, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.egress_deny)

    def _check_host(self, host: str) -> None:
        nets = self._denied
        if not host or not nets:
            return
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            addrs = {ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos}
        except (OSError, ValueError, UnicodeError):
            return  # it does not resolve: the connection fails on its own, revealing nothing
        for addr in addrs:
            if any(addr.version == n.version and addr in n for n in nets):
                raise Forbidden(
                    f"{host} is on a network the server's egress policy does not let users' "
                    "connections reach (egress_deny); ask an admin"
                )
