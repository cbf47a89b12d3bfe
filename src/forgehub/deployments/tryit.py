"""Try-it through shared inference deployments: a prediction of an installed catalogue module
(the dashboard's form, ``POST /api/v1/model-api/v2/models/NAME/predict/``) is answered by that
module version's shared deployment, with replicas on the server's ``local`` compute, scaled to
zero when nobody tries it, rather than in the server's own process. A slow or heavy module then
slows only its own replicas, and try-it scales with its visitors.

The shared deployments belong to a system user (:data:`OWNER`, who has no token and cannot sign
in); admins see them on the Deployments page, with their replicas and plots. One exists per
module and version; a request finds it (the answer is remembered for a few seconds), and makes
it on first use or when it has ended. Whoever may predict may use it: the model API's own checks
(sign-in, or the visitors' rate) come first.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from forgehub.auth import Principal
from forgehub.db.models import Deployment, Role, User
from forgehub.errors import ForgehubError

log = logging.getLogger("forgehub.tryit")
OWNER = "forgehub-tryit"
REMEMBER_S = 5.0


class TryIt:
    """Finds (or makes) the shared deployment of a module version and forwards to it."""

    def __init__(self, app: Any, max_replicas: int, idle_s: int) -> None:
        self.app = app
        self.max_replicas = max_replicas
        self.idle_s = idle_s
        self._known: dict[tuple[str, str], tuple[float, str, str]] = {}  # → (at, id, token)
        self._lock = threading.Lock()

    def _owner(self, session: Any) -> Principal:
        user = session.scalar(select(User).where(User.name == OWNER))
        if user is None:
            user = User(name=OWNER, role=Role.user)
            session.add(user)
            session.flush()
        return Principal(user.id, user.name, user.role)

    def deployment(self, module: str, version: str | None) -> tuple[str, str]:
        """(id, service token) of the running shared deployment of ``module`` ``version``."""
        from forgehub.deployments import service
        from forgehub.states import DeploymentState

        key = (module, version or "")
        hit = self._known.get(key)
        if hit is not None and time.monotonic() - hit[0] < REMEMBER_S:
            return hit[1], hit[2]
        state = self.app.state
        with self._lock, state.db.session() as s:
            owner = self._owner(s)
            found = s.scalars(
                select(Deployment)
                .where(
                    Deployment.owner_id == owner.user_id,
                    Deployment.module == module,
                    Deployment.state.in_(service.ACTIVE),
                )
                .order_by(Deployment.created_at.desc())
            )
            want = version or _installed_version(s, module)
            d = next((x for x in found if (x.version or "") == (want or "")), None)
            if d is not None:
                service.sync(s, d)
                if d.state in (DeploymentState.stopping, DeploymentState.failed):
                    d = None
            if d is None:
                body = service.DeployIn(
                    module=module,
                    # no trained version: the module as shipped, by its installed version's
                    # name (a deployment's default would be the newest trained one)
                    version=version or _installed_version(s, module),
                    title=f"try-it: {module} " + (version or "as shipped"),
                    description="The shared deployment behind this module's try-it.",
                    replicas=service.ReplicasIn(
                        min=0, max=self.max_replicas, target=4, idle_s=self.idle_s
                    ),
                )
                d = service.create(
                    s,
                    owner,
                    body,
                    state.secrets,
                    state.settings.default_store,
                    state.model_api.modules,
                    state.policy,
                    (1 << 30, 0),  # the platform's own: no user's limits
                )
                log.info("try-it: deployed %s %s as %s", module, version or "(shipped)", d.id)
                state.dispatcher.notify()
            found_id, token = d.id, service.token(state.secrets, d)
        self._known[key] = (time.monotonic(), found_id, token)
        return found_id, token

    def forget(self, module: str, version: str | None) -> None:
        self._known.pop((module, version or ""), None)


def _installed_version(session: Any, module: str) -> str | None:
    from forgehub.catalog.installed import INSTALLED
    from forgehub.db.models import CatalogModule, CatalogVersion

    return session.scalar(
        select(CatalogVersion.version)
        .join(CatalogModule, CatalogModule.id == CatalogVersion.module_id)
        .where(CatalogModule.name == module, CatalogVersion.source.like(f"{INSTALLED}%"))
        .order_by(CatalogVersion.created_at.desc())
        .limit(1)
    )


class Forwarded(Response):
    """A prediction answered by the module's shared deployment (streamed as it comes)."""

    def __init__(self, tryit: TryIt, request: Any, module: str, version: str | None) -> None:
        super().__init__()
        self.tryit, self.request, self.module, self.version = tryit, request, module, version

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import anyio.to_thread

        from forgehub.deployments import proxy

        request = self.request
        try:
            dep_id, token = await anyio.to_thread.run_sync(
                self.tryit.deployment, self.module, self.version
            )
            path = f"/deployments/{dep_id}/v2/models/{self.module}/predict/"
            if request.url.query:
                path += f"?{request.url.query}"
            headers = proxy._forwarded(request.headers.raw, "api", token)
            target = proxy.Target("scaled", "api", token, None, 500, 300.0)
            version = self.version

            async def tagged(message: Any) -> None:
                if message["type"] == "http.response.start" and version:
                    message["headers"] = [
                        *message["headers"],
                        (b"x-forgehub-version", version.encode()),
                    ]
                await send(message)

            await proxy._to_replica(
                request, dep_id, target, path, headers, request.stream(), tagged
            )
        except (HTTPException, ForgehubError) as exc:
            self.tryit.forget(self.module, self.version)
            status = exc.status_code if isinstance(exc, HTTPException) else exc.status
            detail = exc.detail
            await JSONResponse({"message": str(detail)}, status)(scope, receive, send)
