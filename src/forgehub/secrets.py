"""Secrets at rest: connection credentials are encrypted with Fernet (AES-128-CBC + HMAC).

Keys come from ``FORGEHUB_SECRET_KEYS`` (comma-separated) or ``<data_dir>/secret.keys`` (one per
line, mode 0600, created on first use). The first key encrypts; every key decrypts, so a key is
rotated by putting a new one first (``forgehub secrets rotate`` does it and re-encrypts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from forgehub.auth import write_secret_file

ENV = "FORGEHUB_SECRET_KEYS"


class SecretsError(Exception):
    pass


def key_file(data_dir: Path) -> Path:
    return data_dir / "secret.keys"


def load_keys(data_dir: Path) -> list[bytes]:
    env = os.environ.get(ENV)
    if env:
        return [k.strip().encode() for k in env.split(",") if k.strip()]
    path = key_file(data_dir)
    if not path.exists():
        write_secret_file(path, Fernet.generate_key().decode())
    return [line.strip().encode() for line in path.read_text().splitlines() if line.strip()]


class SecretBox:
    def __init__(self, keys: list[bytes], data_dir: Path | None = None) -> None:
        if not keys:
            raise SecretsError("no secret keys configured")
        self.keys = list(keys)
        self.fernet = MultiFernet([Fernet(k) for k in keys])
        self.data_dir = data_dir  # where the keys came from: reread after `secrets rotate`

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> SecretBox:
        return cls(load_keys(data_dir), data_dir)

    def _reload(self) -> bool:
        """Read the keys again (a `forgehub secrets rotate` while the server runs); True if
        they changed."""
        if self.data_dir is None:
            return False
        keys = load_keys(self.data_dir)
        fresh = MultiFernet([Fernet(k) for k in keys])
        if [f._signing_key for f in fresh._fernets] == [
            f._signing_key for f in self.fernet._fernets
        ]:
            return False
        self.fernet = fresh
        return True

    def seal(self, values: dict[str, Any]) -> str:
        self._reload()  # seal with the newest key, even one added while the server runs
        return self.fernet.encrypt(json.dumps(values).encode()).decode()

    def open(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            out: dict[str, Any] = json.loads(self.fernet.decrypt(token.encode()))
            return out
        except InvalidToken as exc:
            if self._reload():  # re-encrypted with a key this process has not read yet
                return self.open(token)
            raise SecretsError(
                "cannot decrypt stored secrets: the secret key changed or is "
                "missing (FORGEHUB_SECRET_KEYS / secret.keys)"
            ) from exc

    def rotate(self, token: str) -> str:
        return self.fernet.rotate(token.encode()).decode()


def rotate_key_file(data_dir: Path) -> None:
    """Put a new key first in the key file; older keys keep decrypting until re-encrypted."""
    if os.environ.get(ENV):
        raise SecretsError(f"keys come from {ENV}; put the new key first there instead")
    keys = load_keys(data_dir)
    new = Fernet.generate_key()
    write_secret_file(key_file(data_dir), "\n".join(k.decode() for k in [new, *keys]))
