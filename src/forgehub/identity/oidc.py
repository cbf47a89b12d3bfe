"""OpenID Connect: providers' tokens as credentials, sign-in with the code flow and PKCE.

* **Access tokens** sent to the API as ``Authorization: Bearer``: a JWT is checked against
  the provider's keys (JWKS, cached; an unknown ``kid`` fetches them again, at most every
  :data:`JWKS_MIN_REFRESH` seconds, so a rotated key works at once and junk cannot hammer the
  provider), its issuer, audience and expiry; an opaque token is asked about at the provider's
  introspection endpoint. Answers are cached until the token expires, at most
  :data:`CACHE_S` seconds, so revocation at the provider takes effect within that time.
* **Users** are matched by issuer and subject, never by e-mail. A new one is created on first
  use, inactive while the provider requires an admin's approval. The provider's groups claim
  replaces the user's memberships from that provider; ``admin_groups`` decides the role.
* **Dashboard sign-in**: :meth:`Provider.authorization_url` and :meth:`Provider.finish`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from forgehub.auth import (
    AuthError,
    AwaitingApproval,
    Principal,
    ProviderError,
    group_ids,
    validate_user_name,
)
from forgehub.config import OidcProvider
from forgehub.db.models import Group, GroupMember, Identity, Role, User, utcnow

JWKS_MIN_REFRESH = 2.0  # seconds between two JWKS fetches for unknown keys
METADATA_TTL = 3600.0
CACHE_S = 60.0  # how long a validated token is trusted without asking again
NEGATIVE_CACHE_S = 10.0
LEEWAY = 30  # clock skew allowed on exp/iat/nbf, seconds
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
HTTP_TIMEOUT = 10.0


NAME_CLAIMS = {"preferred_username", "email", "name"}


@dataclass
class Claims:
    provider: OidcProvider
    values: dict[str, Any]
    expires: float
    enriched: bool = False  # userinfo was asked for the names the token lacks
    user_id: str = ""  # the user these claims were linked to (groups and role applied)

    @property
    def subject(self) -> str:
        return str(self.values["sub"])

    @property
    def groups(self) -> list[str] | None:
        """The groups claim, or None when the token does not carry it."""
        raw = self.values.get(self.provider.groups_claim)
        if raw is None:
            return None
        items = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        return sorted({str(g) for g in items if isinstance(g, str | int) and str(g)})


@dataclass
class _Cached:
    until: float
    claims: Claims | None = None
    error: str = ""


@dataclass
class Provider:
    """One configured provider: its metadata and keys, fetched when first needed."""

    config: OidcProvider
    http: httpx.Client
    _meta: dict[str, Any] | None = None
    _meta_at: float = 0.0
    _keys: dict[str | None, Any] = field(default_factory=dict)
    _keys_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.config.name

    def metadata(self) -> dict[str, Any]:
        if self._meta is None or time.monotonic() - self._meta_at > METADATA_TTL:
            url = self.config.issuer + "/.well-known/openid-configuration"
            meta = self.get_json(url)
            if meta.get("issuer", "").rstrip("/") != self.config.issuer:
                raise ProviderError(
                    f"{self.name}: the discovery document names issuer {meta.get('issuer')!r}"
                )
            self._meta, self._meta_at = meta, time.monotonic()
        return self._meta

    def get_json(self, url: str, **kw: Any) -> dict[str, Any]:
        try:
            r = self.http.get(url, **kw)
            r.raise_for_status()
            data = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderError(f"the sign-in provider {self.name} is unavailable: {exc}") from exc
        if not isinstance(data, dict):
            raise ProviderError(f"the sign-in provider {self.name} answered nonsense")
        return data

    def _post(self, endpoint: str, data: dict[str, str], client_auth: bool) -> httpx.Response:
        secret = self.config.client_secret
        try:
            url = self.metadata()[endpoint]
            if client_auth and secret is not None:  # client_secret_basic
                auth = (self.config.client_id, secret.get_secret_value())
                return self.http.post(url, data=data, auth=auth)
            return self.http.post(url, data=data)
        except (httpx.HTTPError, KeyError) as exc:
            raise ProviderError(f"the sign-in provider {self.name} is unavailable: {exc}") from exc

    def key(self, kid: str | None) -> Any:
        """The signing key ``kid``; the key set is fetched again for a key not seen yet."""
        with self._lock:
            if kid not in self._keys and time.monotonic() - self._keys_at > JWKS_MIN_REFRESH:
                doc = self.get_json(self.metadata()["jwks_uri"])
                keys: dict[str | None, Any] = {}
                for k in doc.get("keys", []):
                    if k.get("use", "sig") != "sig":
                        continue
                    try:
                        keys[k.get("kid")] = jwt.PyJWK(k)
                    except jwt.PyJWTError:
                        continue  # an algorithm we do not speak
                self._keys, self._keys_at = keys, time.monotonic()
            found = self._keys.get(kid)
            if found is None and kid is None and len(self._keys) == 1:
                found = next(iter(self._keys.values()))
        if found is None:
            raise AuthError("the token is signed with a key its issuer does not publish")
        return found

    def verify_jwt(self, token: str, audience: list[str], nonce: str | None = None) -> Claims:
        header = jwt.get_unverified_header(token)
        key = self.key(header.get("kid"))
        try:
            values = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=audience,
                issuer=self.config.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("the token was issued for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("the token's issuer is not this provider") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"the token is not valid: {exc}") from exc
        if nonce is not None and values.get("nonce") != nonce:
            raise AuthError("the sign-in answer does not belong to this sign-in (nonce)")
        return Claims(self.config, values, float(values["exp"]))

    def introspect(self, token: str) -> Claims | None:
        """RFC 7662: None when the provider does not know the token as an active one."""
        if self.config.client_secret is None or "introspection_endpoint" not in self.metadata():
            return None
        r = self._post("introspection_endpoint", {"token": token}, client_auth=True)
        if r.status_code != 200:
            raise ProviderError(f"{self.name}'s introspection answered {r.status_code}")
        data = r.json()
        if not data.get("active") or "sub" not in data:
            return None
        if data.get("iss") and str(data["iss"]).rstrip("/") != self.config.issuer:
            return None
        aud = data.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud or [])
        accepted = self.config.accepted_audience
        if not (set(auds) & set(accepted) or data.get("client_id") in accepted):
            raise AuthError("the token was issued for another audience")
        exp = float(data.get("exp") or time.time() + CACHE_S)
        if exp + LEEWAY < time.time():
            raise AuthError("the token has expired")
        return Claims(self.config, data, exp)

    # -- dashboard sign-in (authorization code flow with PKCE) -----------------------------
    def authorization_url(self, redirect_uri: str) -> tuple[str, dict[str, str]]:
        """Where to send the browser, and what the callback needs to check the answer."""
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.config.scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }
        url = self.metadata()["authorization_endpoint"] + "?" + urlencode(query)
        return url, {"state": state, "nonce": nonce, "verifier": verifier}

    def finish(self, code: str, redirect_uri: str, pending: dict[str, str]) -> Claims:
        """Trade the code for tokens; the ID token is checked (signature, issuer, audience,
        nonce) and completed with the userinfo answer."""
        r = self._post(
            "token_endpoint",
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": pending["verifier"],
                "client_id": self.config.client_id,
            },
            client_auth=True,
        )
        if r.status_code != 200:
            raise AuthError(f"the provider refused the sign-in: {_oauth_error(r)}")
        tokens = r.json()
        if "id_token" not in tokens:
            raise AuthError("the provider sent no ID token (is 'openid' among the scopes?)")
        claims = self.verify_jwt(tokens["id_token"], [self.config.client_id], pending["nonce"])
        userinfo = self.metadata().get("userinfo_endpoint")
        if userinfo and tokens.get("access_token"):
            info = self.get_json(
                userinfo, headers={"Authorization": f"Bearer {tokens['access_token']}"}
            )
            if info.get("sub") == claims.subject:
                claims.values = {**info, **claims.values}
        return claims


def _oauth_error(r: httpx.Response) -> str:
    try:
        data = r.json()
        return str(data.get("error_description") or data.get("error") or r.status_code)
    except ValueError:
        return str(r.status_code)


def _issuer_of(token: str) -> str | None:
    """The ``iss`` of something that looks like a JWT (unverified: only to pick a provider)."""
    if token.count(".") != 2:
        return None
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    iss = data.get("iss") if isinstance(data, dict) else None
    return str(iss).rstrip("/") if iss else None


class Registry:
    """The configured providers, and the cache of tokens already checked."""

    def __init__(self, providers: list[OidcProvider]) -> None:
        self.http = httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False)
        self.providers = {p.name: Provider(p, self.http) for p in providers}
        self._by_issuer = {p.issuer: self.providers[p.name] for p in providers}
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.providers)

    def close(self) -> None:
        self.http.close()

    def get(self, name: str) -> Provider | None:
        return self.providers.get(name)

    def check(self, token: str) -> Claims:
        """The claims of a provider's access token, or AuthError."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit.until > now:
            if hit.claims is None:
                raise AuthError(hit.error)
            return hit.claims
        try:
            claims = self._check(token)
        except ProviderError:
            raise  # not the token's fault: not cached
        except AuthError as exc:
            self._remember(key, _Cached(now + NEGATIVE_CACHE_S, error=str(exc)))
            raise
        self._remember(key, _Cached(min(claims.expires, now + CACHE_S), claims))
        return claims

    def _userinfo(self, name: str, token: str) -> dict[str, Any]:
        """What the provider's userinfo says for an access token that names nobody (some
        providers put only ``sub`` in access tokens); nothing when it cannot say."""
        provider = self.providers[name]
        try:
            url = provider.metadata().get("userinfo_endpoint")
            if not url:
                return {}
            info = provider.get_json(url, headers={"Authorization": f"Bearer {token}"})
        except ProviderError:
            return {}
        return {k: v for k, v in info.items() if k in NAME_CLAIMS}

    def _remember(self, key: str, entry: _Cached) -> None:
        with self._lock:
            if len(self._cache) > 10_000:  # drop what has expired, then the oldest half
                now = time.time()
                self._cache = {k: v for k, v in self._cache.items() if v.until > now}
                if len(self._cache) > 5_000:
                    self._cache = dict(list(self._cache.items())[-5_000:])
            self._cache[key] = entry

    def _check(self, token: str) -> Claims:
        issuer = _issuer_of(token)
        if issuer is not None:
            provider = self._by_issuer.get(issuer)
            if provider is None:
                raise AuthError("the token's issuer is not a provider this server trusts")
            return provider.verify_jwt(token, provider.config.accepted_audience)
        for provider in self.providers.values():
            claims = provider.introspect(token)
            if claims is not None:
                return claims
        raise AuthError("unknown token")

    def authenticate(self, session: Session, token: str) -> Principal:
        claims = self.check(token)
        if not claims.enriched and not NAME_CLAIMS & set(claims.values):
            claims.enriched = True  # once per token: its claims are cached with it
            claims.values = {**self._userinfo(claims.provider.name, token), **claims.values}
        user = session.get(User, claims.user_id) if claims.user_id else None
        if user is None:  # first use of this token: match, create, bring groups up to date
            user = link_user(session, claims)
            claims.user_id = user.id  # the claims are cached with the token: once per token
        elif not user.active:
            raise AwaitingApproval(f"the account {user.name!r} is not approved (or was suspended)")
        return Principal(
            user_id=user.id, name=user.name, role=user.role, groups=group_ids(session, user.id)
        )


# -- users and groups ---------------------------------------------------------------------------
def link_user(session: Session, claims: Claims) -> User:
    """The user behind ``claims`` (matched by issuer and subject; created on first use), with
    the provider's groups and admin mapping applied. Raises AuthError for a user who waits
    for approval."""
    provider = claims.provider
    ident = session.scalar(
        select(Identity).where(
            Identity.issuer == provider.issuer, Identity.subject == claims.subject
        )
    )
    if ident is None:
        user = User(
            name=_free_name(session, claims.values),
            role=Role.user,
            active=not provider.require_approval,
        )
        session.add(user)
        session.flush()
        ident = Identity(
            user_id=user.id,
            issuer=provider.issuer,
            subject=claims.subject,
            email=str(claims.values.get("email") or "")[:320],
        )
        session.add(ident)
        session.flush()
    else:
        found = session.get(User, ident.user_id)
        assert found is not None
        user = found
        now = utcnow()
        if (now - ident.last_seen_at).total_seconds() > 60:
            ident.last_seen_at = now
    groups = claims.groups
    if groups is not None:
        sync_groups(session, user, f"oidc:{provider.name}", groups)
        if provider.admin_groups:
            user.role = Role.admin if set(groups) & set(provider.admin_groups) else Role.user
    if not user.active:
        raise AwaitingApproval(
            f"your account {user.name!r} waits for an administrator's approval "
            f"(`forgehub user approve {user.name}`)"
        )
    return user


def sync_groups(session: Session, user: User, source: str, names: list[str]) -> None:
    """Make ``user``'s memberships from ``source`` exactly ``names`` (other sources' stay)."""
    current = dict(
        session.execute(
            select(Group.name, Group.id)
            .join(GroupMember, GroupMember.group_id == Group.id)
            .where(GroupMember.user_id == user.id, GroupMember.source == source)
        ).all()
    )
    wanted = set(names)
    gone = [gid for name, gid in current.items() if name not in wanted]
    if gone:
        session.execute(
            delete(GroupMember).where(
                GroupMember.user_id == user.id,
                GroupMember.source == source,
                GroupMember.group_id.in_(gone),
            )
        )
    for name in sorted(wanted - set(current)):
        group = session.scalar(select(Group).where(Group.name == name))
        if group is None:
            group = Group(name=name[:255])
            session.add(group)
            session.flush()
        if session.get(GroupMember, (group.id, user.id)) is None:
            session.add(GroupMember(group_id=group.id, user_id=user.id, source=source))
    session.flush()


def _free_name(session: Session, values: dict[str, Any]) -> str:
    """A forgehub user name from the claims (preferred_username, the e-mail's local part, the
    name): lower-cased, unsafe characters replaced, made unique with a number."""
    base = ""
    for raw in (
        values.get("preferred_username"),
        str(values.get("email") or "").split("@")[0],
        values.get("name"),
    ):
        if raw:
            base = re.sub(r"[^a-z0-9_.-]+", "-", str(raw).lower()).strip("-._")
            if base:
                break
    if not base or not base[0].isalpha():
        base = "user-" + base if base else "user"
    base = base[:56]
    name, n = base, 1
    while session.scalar(select(User.id).where(User.name == name)) is not None:
        n += 1
        name = f"{base}-{n}"
    return validate_user_name(name)
