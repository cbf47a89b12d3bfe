"""/api/v1/auth: how to sign in (the OpenID providers this server trusts)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

router = APIRouter(prefix="/auth", tags=["users"])


class ProviderOut(BaseModel):
    name: str
    label: str
    issuer: str
    cli_client_id: str | None = Field(
        description="Public client for the device flow (`forgehub login --provider NAME`)."
    )
    cli_scopes: str


@router.get("/providers", response_model=list[ProviderOut])
def providers(request: Request) -> list[ProviderOut]:
    """The OpenID Connect providers people sign in with (public: the sign-in page and the CLI
    need it before anyone is signed in)."""
    return [
        ProviderOut(
            name=p.name,
            label=p.label or f"Sign in with {p.name}",
            issuer=p.issuer,
            cli_client_id=p.cli_client_id,
            cli_scopes=p.cli_scopes,
        )
        for p in request.app.state.settings.oidc
    ]
