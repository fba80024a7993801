"""TLS, mutual TLS and bearer-token roles on a real server over loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.server.app import LabelingServer
from pseudostream.server.errors import ConfigError
from pseudostream.server.security import SecurityConfig, TokenStore

pytestmark = pytest.mark.integration

TOKENS = {"producer": "tok-producer-8d1f", "trainer": "tok-trainer-4a7c", "admin": "tok-admin-93be",
          "digits-admin": "tok-digits-admin-51e0", "other-admin": "tok-other-admin-c2d9"}
WRONG = "tok-not-issued-0000"
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


# --- certificates ---------------------------------------------------------------------------

def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          san: list[x509.GeneralName] | None = None, usage: Any = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate (127.0.0.1, localhost) and a client certificate, as PEM files."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("pseudostream test CA", ca_key, None, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = _cert("localhost", server_key, ca, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = _cert("trainer-1", client_key, ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {"ca": ca, "server.crt": server, "server.key": server_key,
             "client.crt": client, "client.key": client_key}
    for name, obj in files.items():
        (d / name).write_bytes(_pem(obj))
    return {name: d / name for name in files}


def _tls(pki: dict[str, Path], mutual: bool = False) -> dict[str, Any]:
    tls = {"cert_file": pki["server.crt"], "key_file": pki["server.key"]}
    return {"tls": {**tls, "client_ca_file": pki["ca"]} if mutual else tls}


async def _label_ok(address: str, x: np.ndarray, **client: Any) -> None:
    async with AsyncLabelerClient(address, **client) as c:
        result = await c.label("digits", x[:4], timeout=10)
    assert len(result) == 4


async def _label_code(address: str, x: np.ndarray, **client: Any) -> grpc.StatusCode:
    async with AsyncLabelerClient(address, **client) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.label("digits", x[:4], timeout=5)
    return err.value.code()


async def test_tls_serves_trusting_clients_and_refuses_plaintext(make_config, digits, pki):
    x = np.ascontiguousarray(digits.stream_x[:4])
    async with LabelingServer(make_config(security=_tls(pki))) as server:
        ca = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        await _label_ok(server.address, x, credentials=ca)
        assert await _label_code(server.address, x) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(make_config, digits, pki):
    x = np.ascontiguousarray(digits.stream_x[:4])
    async with LabelingServer(make_config(security=_tls(pki, mutual=True))) as server:
        ca = pki["ca"].read_bytes()
        without = grpc.ssl_channel_credentials(root_certificates=ca)
        assert await _label_code(server.address, x, credentials=without) == grpc.StatusCode.UNAVAILABLE
        with_cert = grpc.ssl_channel_credentials(root_certificates=ca,
                                                 private_key=pki["client.key"].read_bytes(),
                                                 certificate_chain=pki["client.crt"].read_bytes())
        await _label_ok(server.address, x, credentials=with_cert)


# --- bearer tokens --------------------------------------------------------------------------

@pytest.fixture
def tokens_config(make_config, teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Topics "digits" (teacher digits-cnn) and "other" (teacher cnn-2); producer/trainer/
    topic-admin tokens in a file (plaintext and pre-hashed), the global admin in an env var."""
    entries = [
        {"name": "producer", "token": TOKENS["producer"], "roles": {"digits": ["producer"]}},
        {"name": "trainer", "token_sha256": hashlib.sha256(TOKENS["trainer"].encode()).hexdigest(),
         "roles": {"digits": ["trainer"]}},
        {"name": "digits-admin", "token": TOKENS["digits-admin"], "roles": {"digits": ["admin"]}},
        {"name": "other-admin", "token": TOKENS["other-admin"], "roles": {"other": ["admin"]}},
    ]
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump(entries))
    monkeypatch.setenv("TEST_PSEUDOSTREAM_TOKENS", yaml.safe_dump(
        [{"name": "admin", "token": TOKENS["admin"], "roles": {"*": ["admin"]}}]))
    return make_config(teachers={"cnn-2": {"model_dir": teacher_dir, "intra_op_threads": 1}},
                       topics={"other": {"teacher": "cnn-2"}},
                       security={"tokens_file": tmp_path / "tokens.yaml",
                                 "tokens_env": "TEST_PSEUDOSTREAM_TOKENS"})


Call = Callable[[AsyncLabelerClient, np.ndarray, str], Awaitable[Any]]


async def _label(c: AsyncLabelerClient, x: np.ndarray, topic: str) -> Any:
    return await c.label(topic, x[:8], timeout=10)


async def _subscribe(c: AsyncLabelerClient, x: np.ndarray, topic: str) -> Any:
    async def first() -> Any:
        async for batch in c.subscribe(topic, "g", "c1", max_batch=4):
            return batch
    return await asyncio.wait_for(first(), 10)


async def _ack(c: AsyncLabelerClient, x: np.ndarray, topic: str) -> Any:
    return await c.ack(topic, "g", [0])


async def _feedback(c: AsyncLabelerClient, x: np.ndarray, topic: str) -> Any:
    return await c.feedback(topic, "g", [0], loss_before=1.0, loss_after=0.5)


async def _get_topic(c: AsyncLabelerClient, x: np.ndarray, topic: str) -> Any:
    return await c.get_topic(topic)


async def _publish(c: AsyncLabelerClient, x: np.ndarray, topic: str) -> Any:
    return await c.publish_teacher("digits-cnn", "/nonexistent/teacher-dir")


async def _rollback(c: AsyncLabelerClient, x: np.ndarray, topic: str) -> Any:
    return await c.rollback_teacher("digits-cnn", "no-such-version")


# rpc -> (call, a token with the role on "digits", a token lacking it)
RPCS: dict[str, tuple[Call, str, str]] = {
    "Label": (_label, "producer", "trainer"),
    "Subscribe": (_subscribe, "trainer", "producer"),
    "Ack": (_ack, "trainer", "producer"),
    "Feedback": (_feedback, "trainer", "producer"),
    "GetTopic": (_get_topic, "digits-admin", "trainer"),
    "PublishTeacher": (_publish, "digits-admin", "trainer"),  # digits-cnn serves "digits"
    "RollbackTeacher": (_rollback, "digits-admin", "producer"),
}


async def _code(address: str, token: str | None, call: Call, x: np.ndarray,
                topic: str = "digits") -> grpc.StatusCode:
    """The status code ``call`` ends with (OK when it returns)."""
    async with AsyncLabelerClient(address, token=token) as c:
        try:
            await call(c, x, topic)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_every_rpc_checks_token_and_role(tokens_config, digits, caplog):
    caplog.set_level(logging.DEBUG)
    x = np.ascontiguousarray(digits.stream_x[:64])
    async with LabelingServer(tokens_config) as server:
        async with AsyncLabelerClient(server.address, token=TOKENS["admin"]) as admin:
            seeded = await admin.label("digits", x, timeout=10)  # something for Subscribe/Ack
        assert int(np.sum(seeded.accepted)) > 0
        for rpc, (call, allowed, lacking) in RPCS.items():
            for token in (None, WRONG):
                code = await _code(server.address, token, call, x)
                assert code == grpc.StatusCode.UNAUTHENTICATED, (rpc, token)
            code = await _code(server.address, TOKENS[lacking], call, x)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, lacking)
            code = await _code(server.address, TOKENS[allowed], call, x)
            assert code not in AUTH_CODES, (rpc, allowed, code)
            if rpc in ("Label", "Subscribe", "Ack", "GetTopic"):
                assert code == grpc.StatusCode.OK, (rpc, code)
            if rpc not in ("Label", "PublishTeacher", "RollbackTeacher"):  # these name no other topic here
                other = await _code(server.address, TOKENS[allowed], call, x, topic="other")
                assert other == grpc.StatusCode.PERMISSION_DENIED, (rpc, other)  # role is per topic
        # Admin implies every role, on every topic.
        for rpc, (call, _, _) in RPCS.items():
            assert await _code(server.address, TOKENS["admin"], call, x, "other") not in AUTH_CODES, rpc
        # A topic admin holds every role on its topic.
        assert await _code(server.address, TOKENS["digits-admin"], _label, x) == grpc.StatusCode.OK
        assert await _code(server.address, TOKENS["digits-admin"], _ack, x) == grpc.StatusCode.OK
        # Teacher RPCs: admin on '*' or on a topic the teacher serves (other-admin: cnn-2 only).
        for call in (_publish, _rollback):
            assert await _code(server.address, TOKENS["other-admin"], call, x) \
                == grpc.StatusCode.PERMISSION_DENIED
        # Health stays open without a token.
        async with grpc.aio.insecure_channel(server.address) as channel:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "producer" in caplog.text  # names are logged ...
    for secret in (*TOKENS.values(), WRONG):  # ... tokens never
        assert secret not in caplog.text


async def test_label_stream_checks_the_topic_of_every_request(tokens_config, digits):
    x = np.ascontiguousarray(digits.stream_x[:8])
    requests = [make_label_request("digits", x[:4]), make_label_request("other", x[4:])]
    answered = []
    async with LabelingServer(tokens_config) as server, \
            AsyncLabelerClient(server.address, token=TOKENS["producer"]) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for result in c.label_stream(requests, timeout=10):
                answered.append(result)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "producer" in err.value.details() and "'other'" in err.value.details()
    assert len(answered) == 1 and len(answered[0]) == 4  # the allowed request was answered


async def test_unauthenticated_message_says_how_to_fix(tokens_config):
    async with LabelingServer(tokens_config) as server, AsyncLabelerClient(server.address) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.get_topic("digits")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in err.value.details()


def test_tokens_are_stored_hashed(tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump([
        {"name": "p", "token": "plain-secret-1", "roles": {"digits": ["producer"]}},
        {"name": "t", "token_sha256": hashlib.sha256(b"plain-secret-2").hexdigest().upper(),
         "roles": {"*": ["trainer"]}},
    ]))
    config = SecurityConfig(tokens_file=path)
    assert config.auth_required and not SecurityConfig().auth_required
    store = TokenStore.load(config)
    assert store is not None
    assert store.digests == [hashlib.sha256(b"plain-secret-1").digest(),
                             hashlib.sha256(b"plain-secret-2").digest()]
    held = repr(vars(store)) + repr(store._digests)
    assert "plain-secret" not in held
    assert store.authenticate("plain-secret-1").name == "p"
    assert store.authenticate("plain-secret-2").allows("trainer", "anything")
    assert store.authenticate("plain-secret-3") is None
    assert "plain-secret" not in caplog.text


@pytest.mark.parametrize("entries, problem", [
    ([{"name": "x", "roles": {"*": ["admin"]}}], "exactly one of token_sha256 or token"),
    ([{"name": "x", "token": "a", "token_sha256": "0" * 64, "roles": {}}], "exactly one"),
    ([{"name": "x", "token_sha256": "abc", "roles": {}}], "token_sha256"),
    ([{"name": "x", "token": "s3cret-value", "roles": {"*": ["root"]}}], "roles"),
    ([{"name": "x", "token": "a", "roles": {}}, {"name": "x", "token": "b", "roles": {}}], "unique"),
])
def test_bad_token_files_are_refused_without_echoing_tokens(tmp_path: Path, entries, problem):
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(entries))
    with pytest.raises(ConfigError, match=problem) as err:
        TokenStore.load(SecurityConfig(tokens_file=path))
    assert "s3cret-value" not in str(err.value)


def test_tokens_env_must_be_set(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TEST_PSEUDOSTREAM_UNSET", raising=False)
    with pytest.raises(ConfigError, match="TEST_PSEUDOSTREAM_UNSET"):
        TokenStore.load(SecurityConfig(tokens_env="TEST_PSEUDOSTREAM_UNSET"))
