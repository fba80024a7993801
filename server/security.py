"""Transport security and bearer tokens: config models, server credentials, the token store.

Off by default: with no ``tls`` section the port is plaintext, and with neither ``tokens_file``
nor ``tokens_env`` every caller may call every RPC (``auth_required`` is False). Example::

    security:
      tls:
        cert_file: /etc/pseudostream/server.crt
        key_file: /etc/pseudostream/server.key
        client_ca_file: /etc/pseudostream/clients-ca.crt   # omit for TLS only; set: mutual TLS
      tokens_file: /etc/pseudostream/tokens.yaml           # and/or tokens_env: PSEUDOSTREAM_TOKENS

The tokens file (or the variable named by ``tokens_env``, holding the same YAML) is a list::

    - name: camera-feed
      token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      roles: {digits: [producer]}
    - name: ops
      token: change-me            # plaintext is accepted, hashed at load, never kept
      roles: {"*": [admin]}

Roles are ``producer`` (Label), ``trainer`` (Subscribe, Ack, Feedback) and ``admin`` (GetTopic,
PublishTeacher, RollbackTeacher; admin implies every role). Role keys are topic names or ``*``.
Only SHA-256 digests are held in memory, compared with ``hmac.compare_digest``; only token
*names* are ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import yaml
from pseudostream.server.errors import ConfigError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

__all__ = [
    "Principal",
    "Role",
    "SecurityConfig",
    "TlsConfig",
    "TokenEntry",
    "TokenStore",
    "server_credentials",
]

log = logging.getLogger(__name__)

Role = Literal["producer", "trainer", "admin"]
ANY_TOPIC = "*"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    """Server certificate and key (PEM); ``client_ca_file`` set turns on mutual TLS."""

    cert_file: Path = Field(description="server certificate chain, PEM")
    key_file: Path = Field(description="server private key, PEM")
    client_ca_file: Path | None = Field(
        None, description="CA bundle for client certificates: set = clients must present one")


class TokenEntry(_Strict):
    """One caller: a name (the only thing logged), its token (hashed) and its roles per topic."""

    name: str = Field(min_length=1)
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$",
                                     description="hex SHA-256 of the token")
    token: SecretStr | None = Field(None, description="plaintext token, hashed at load")
    roles: dict[str, list[Role]] = Field(description="topic (or '*') -> roles")

    @model_validator(mode="after")
    def _one_token(self) -> TokenEntry:
        if (self.token_sha256 is None) == (self.token is None):
            raise ValueError(f"token {self.name!r}: give exactly one of token_sha256 or token")
        if self.token is not None and not self.token.get_secret_value():
            raise ValueError(f"token {self.name!r}: token is empty")
        return self

    def digest(self) -> bytes:
        if self.token is not None:
            return hashlib.sha256(self.token.get_secret_value().encode()).digest()
        return bytes.fromhex(self.token_sha256 or "")


class SecurityConfig(_Strict):
    """TLS / mutual TLS on the gRPC port and bearer-token authorization (both off by default)."""

    tls: TlsConfig | None = Field(None, description="None: plaintext port")
    tokens_file: Path | None = Field(None, description="YAML list of tokens (see module docs)")
    tokens_env: str | None = Field(None, description="name of an env var holding that YAML")

    @property
    def auth_required(self) -> bool:
        """True when tokens are configured: then every Labeler RPC needs a bearer token."""
        return self.tokens_file is not None or self.tokens_env is not None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name and roles per topic (no secret kept here)."""

    name: str
    roles: dict[str, frozenset[str]]

    def allows(self, role: str, topic: str) -> bool:
        """``role`` on ``topic``, via the topic's roles or ``*``; admin implies every role."""
        held = self.roles.get(topic, frozenset()) | self.roles.get(ANY_TOPIC, frozenset())
        return role in held or "admin" in held


_ENTRIES = TypeAdapter(list[TokenEntry])


class TokenStore:
    """Bearer tokens as SHA-256 digests; ``authenticate(token)`` -> Principal or None."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        names = [e.name for e in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"token names must be unique; repeated: {', '.join(dupes)}")
        self._digests: list[tuple[bytes, Principal]] = [
            (e.digest(), Principal(e.name, {t: frozenset(r) for t, r in e.roles.items()}))
            for e in entries
        ]

    @property
    def names(self) -> list[str]:
        return [p.name for _, p in self._digests]

    @property
    def digests(self) -> list[bytes]:
        """The stored SHA-256 digests (for inspection; the plaintext is never kept)."""
        return [d for d, _ in self._digests]

    def authenticate(self, token: str) -> Principal | None:
        """The caller holding ``token``; compares against every digest in constant time each."""
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for digest, principal in self._digests:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found

    @classmethod
    def load(cls, config: SecurityConfig) -> TokenStore | None:
        """The tokens from ``tokens_file`` and ``tokens_env`` together; None when neither is set."""
        if not config.auth_required:
            return None
        entries: list[TokenEntry] = []
        if config.tokens_file is not None:
            try:
                text = config.tokens_file.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read tokens_file {config.tokens_file}: {exc}") from exc
            entries += _parse(text, str(config.tokens_file))
        if config.tokens_env is not None:
            text = os.environ.get(config.tokens_env)
            if not text:
                raise ConfigError(f"tokens_env: variable {config.tokens_env} is unset or empty")
            entries += _parse(text, f"${config.tokens_env}")
        store = cls(entries)
        log.info("bearer tokens loaded for: %s", ", ".join(store.names) or "(none)")
        return store


def _parse(text: str, source: str) -> list[TokenEntry]:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The YAML error quotes the offending line, which may hold a token: keep it out.
        raise ConfigError(f"tokens in {source}: not valid YAML ({type(exc).__name__})") from None
    try:
        return _ENTRIES.validate_python(data or [])
    except ValidationError as exc:
        # Report locations and messages only: pydantic's input echo could hold a token.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"tokens in {source}: {problems}") from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls.{what}: cannot read {path}: {exc}") from exc


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS credentials for ``server.add_secure_port``; mutual TLS when ``client_ca_file`` is set."""
    key, cert = _read(tls.key_file, "key_file"), _read(tls.cert_file, "cert_file")
    ca = _read(tls.client_ca_file, "client_ca_file") if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)
