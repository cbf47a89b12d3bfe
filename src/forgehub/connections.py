"""Connections: a user's configured instance of an adapter kind (storage or compute).

A connection has a name (unique per owner), a kind, a plain configuration and its secrets, which
are sealed with the platform key and never come back out through the API. One implementation
serves both families; each family names its table, its registry and its error type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.auth import Principal
from forgehub.errors import ForgehubError
from forgehub.identity import authz
from forgehub.secrets import SecretBox

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MASK = "***"
ID = re.compile(r"[0-9a-f]{32}")  # what new_id() makes: anything else is a name
C = TypeVar("C")  # the connection table


class ConnectionProblem(ForgehubError):
    """A connection that cannot be found, saved or used (the status says why)."""


@dataclass(frozen=True)
class Family(Generic[C]):
    """One family of connections: ``storage`` or ``compute``."""

    label: str
    model: type[C]
    adapter_class: Callable[[str], Any]
    error: type[Exception]  # what the family's adapters raise; its message is safe to show
    kinds: Callable[[], dict[str, str]]
    _schemas: list[tuple[str, dict[str, Any]]] = field(
        default_factory=list, compare=False, repr=False
    )

    def schemas(self) -> list[tuple[str, dict[str, Any]]]:
        """Every kind that loads here, with the JSON Schema of its configuration. Worked out
        once per process (about 20 ms): the installed kinds do not change while it runs."""
        if not self._schemas:
            for kind in sorted(self.kinds()):
                try:
                    cls = self.adapter_class(kind)
                except self.error:
                    continue
                self._schemas.append((kind, cls.Config.model_json_schema()))
        return self._schemas

    def secret_fields(self, kind: str) -> set[str]:
        cls = self.adapter_class(kind)
        return {n for n, f in cls.Config.model_fields.items() if f.annotation is SecretStr}

    def validate_config(self, kind: str, config: dict[str, Any]) -> BaseModel:
        try:
            cls = self.adapter_class(kind)
        except self.error as exc:  # unknown kind
            raise ConnectionProblem(str(exc), 422) from exc
        try:
            cfg: BaseModel = cls.Config.model_validate(config)
            return cfg
        except ValidationError as exc:
            errors = [
                {"path": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]}
                for e in exc.errors()
            ]
            raise ConnectionProblem(
                "invalid configuration: "
                + "; ".join(f"{e['path']}: {e['reason']}" for e in errors),
                422,
                errors,
            ) from None

    def owned(self, session: Session, owner_id: str) -> list[C]:
        """A user's connections of this family, by name."""
        model: Any = self.model
        stmt = select(model).where(model.owner_id == owner_id).order_by(model.name)
        return list(session.scalars(stmt))

    def listed(self, session: Session, principal: Principal) -> list[dict[str, Any]]:
        """The caller's connections, then those their groups share with them (named
        ``owner/name``, which is how jobs and pushes refer to them), secrets masked."""
        from forgehub.db.models import User

        model: Any = self.model
        mine = [self.out(c) for c in self.owned(session, principal.user_id)]
        if not principal.groups or principal.is_admin:  # admins: their own, as before
            return mine
        stmt = authz.visible(
            select(model, User.name)
            .join(User, User.id == model.owner_id)
            .where(model.owner_id != principal.user_id)
            .order_by(User.name, model.name),
            model,
            principal,
            "connection.read",
        )
        shared = [
            {**self.out(c), "ref": f"{owner}/{c.name}", "owner": owner}
            for c, owner in session.execute(stmt)
        ]
        return mine + shared

    def adapter_for(self, conn: Any, box: SecretBox) -> Any:
        cls = self.adapter_class(conn.kind)
        return cls(cls.Config.model_validate({**conn.config, **box.open(conn.secrets)}))

    def create(
        self,
        session: Session,
        box: SecretBox,
        owner_id: str,
        name: str,
        kind: str,
        config: dict[str, Any],
        *,
        test: bool = True,
        default: bool = False,
    ) -> C:
        if not NAME_RE.match(name):
            raise ConnectionProblem(
                "connection names are 1-64 lower-case letters, digits, '_', '.', '-'", 422
            )
        model: Any = self.model
        if session.scalar(select(model).where(model.owner_id == owner_id, model.name == name)):
            raise ConnectionProblem(f"you already have a {self.label} connection {name!r}", 409)
        cfg = self.validate_config(kind, config)
        if test:
            try:
                self.adapter_class(kind)(cfg).test()
            except self.error as exc:
                raise ConnectionProblem(f"connection test failed: {exc}", 400) from exc
        secrets = self.secret_fields(kind)
        dumped = cfg.model_dump(mode="json")
        sealed = {k: getattr(cfg, k).get_secret_value() for k in secrets}
        conn = model(
            owner_id=owner_id,
            name=name,
            kind=kind,
            config={k: v for k, v in dumped.items() if k not in secrets},
            secrets=box.seal(sealed) if any(sealed.values()) else None,
            is_default=default,
        )
        session.add(conn)
        session.flush()
        return conn  # type: ignore[no-any-return,unused-ignore]

    def find(self, session: Session, principal: Principal, name_or_id: str) -> C:
        """By id, by your own name, or ``owner/name`` (one shared with your group)."""
        model: Any = self.model
        conn = session.get(model, name_or_id) if ID.fullmatch(name_or_id) else None
        if conn is None and "/" in name_or_id:
            from forgehub.db.models import User

            owner, _, name = name_or_id.partition("/")
            conn = session.scalar(
                select(model)
                .join(User, User.id == model.owner_id)
                .where(User.name == owner, model.name == name)
            )
        if conn is None or not authz.can(principal, "connection.read", conn):
            conn = session.scalar(
                select(model).where(model.owner_id == principal.user_id, model.name == name_or_id)
            )
        if conn is None:
            raise ConnectionProblem(f"no {self.label} connection {name_or_id!r} of yours", 404)
        return conn  # type: ignore[no-any-return,unused-ignore]

    def out(self, conn: Any) -> dict[str, Any]:
        config = dict(conn.config)
        for k in self.secret_fields(conn.kind):
            config[k] = MASK if conn.secrets else ""
        return {
            "id": conn.id,
            "name": conn.name,
            "ref": conn.name,
            "kind": conn.kind,
            "config": config,
            "default": conn.is_default,
            "created_at": conn.created_at.isoformat(),
        }
