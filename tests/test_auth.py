"""Section 4 of API.md: bearer tokens, keys, algorithms and the admin scope."""

from __future__ import annotations

import base64
import functools
import hmac
import json
import socket
import sys
import threading
import time
import types
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fakeredis
import jwt
import jwt.jwk_set_cache
import jwt.jwks_client
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stat_service import ConfigError, create_app
from tests.conftest import PATH, SECRET, SUB, bearer, make_token
from tests.harness import PROMPT, assert_prompt_503
from tests.support import dump, free_port

OTHER = "other@example.org"
SEED = {
    "favorites": ["f1", "f2"],
    "view_data": [{"asset_id": "a1", "play_count": 2, "last_played_on": 1764000}],
}
BODY = {"favorites": ["x1"], "view_data": [{"asset_id": "a9", "play_count": 1}]}
NO_TOKEN_BODY = {
    "result": "error",
    "message": "UNAUTHORIZED",
    "reason": "No Authorization Token",
}


# --- keys and hand-made tokens -------------------------------------------


def rsa_key(name: str = "main") -> rsa.RSAPrivateKey:
    return _rsa_key(name)


@functools.cache
def _rsa_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private_key) -> str:
    return (
        private_key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_token(
    header: dict, payload: dict, hmac_key: bytes | None = None, digest="sha256"
) -> str:
    """A JWS built without PyJWT: HMAC over ``hmac_key``, else no signature."""
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    )
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), digest).digest()
    return signing_input + "." + b64url(signature)


def claims(sub=SUB, ttl=60, **extra) -> dict:
    return {"sub": sub, "exp": int(time.time()) + ttl, **extra}


def hs256(payload: dict, **header) -> str:
    return hand_token(
        {"alg": "HS256", "typ": "JWT", **header}, payload, SECRET.encode()
    )


def token_for(sub=SUB, **extra) -> dict:
    return {"Authorization": "Bearer " + make_token(sub, **extra)}


def rs256(sub=SUB, key_name="main", **headers) -> str:
    return jwt.encode(
        claims(sub), rsa_key(key_name), algorithm="RS256", headers=headers
    )


# --- helpers --------------------------------------------------------------


@pytest.fixture
def make_client(settings, redis_client):
    """A test client of an app built from ``settings`` plus overrides."""

    def build(**overrides):
        app = create_app({**settings, **overrides}, redis_client=redis_client)
        return app.test_client()

    return build


def seed(client, sub=SUB):
    client.application.extensions["stat_store"].put(sub, SEED, delta=False)


def put(client, headers=None, sub=SUB, **kwargs):
    return client.put(PATH + sub, json=BODY, headers=headers or {}, **kwargs)


def error_body(resp, status: int, message: str) -> dict:
    assert resp.status_code == status, resp.data
    assert resp.mimetype == "application/json"
    payload = resp.get_json()
    assert payload["result"] == "error"
    assert payload["message"] == message
    assert isinstance(payload["reason"], str)
    assert payload["reason"]
    assert SECRET.encode() not in resp.data
    return payload


def assert_invalid_token(resp):
    error_body(resp, 401, "UNAUTHORIZED")
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    assert 'error="invalid_token"' in challenge


# --- 401: no token, bad tokens -----------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_missing_token_is_401_with_the_metax_body(client, snapshot, method):
    seed(client)
    before = snapshot()
    resp = client.open(PATH + SUB, method=method, json=BODY)
    assert resp.status_code == 401
    assert resp.get_json() == NO_TOKEN_BODY
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error=" not in resp.headers["WWW-Authenticate"]
    assert snapshot() == before


def _tampered():
    header, _, signature = make_token().split(".")
    payload = b64url(json.dumps(claims(OTHER, scope="stat:admin")).encode())
    return f"Bearer {header}.{payload}.{signature}"


def _two_credentials():
    token = make_token()
    return f"Bearer {token}, Bearer {token}"


# (id, Authorization value factory, a token was sent)
BAD_AUTHORIZATION = [
    ("basic-scheme", lambda: "Basic dXNlcjpwYXNzd29yZA==", False),
    ("bearer-without-token", lambda: "Bearer", False),
    ("bearer-blank-token", lambda: "Bearer    ", False),
    # No "Bearer" scheme: no bearer credentials at all (RFC 6750, 3.1).
    ("token-without-scheme", lambda: make_token(), False),
    ("two-tokens", lambda: f"Bearer {make_token()} {make_token()}", True),
    ("two-bearer-credentials", _two_credentials, True),
    ("not-a-jwt", lambda: "Bearer not-a-jwt", True),
    ("bad-signature", lambda: "Bearer " + make_token(secret=SECRET[::-1]), True),
    ("tampered-payload", _tampered, True),
    (
        "alg-none",
        lambda: "Bearer " + hand_token({"alg": "none", "typ": "JWT"}, claims()),
        True,
    ),
    (
        "alg-None",
        lambda: "Bearer " + hand_token({"alg": "None"}, claims()),
        True,
    ),
    (
        "alg-none-admin",
        lambda: "Bearer " + hand_token({"alg": "none"}, claims(scope="stat:admin")),
        True,
    ),
    (
        "hs384-not-pinned",
        lambda: (
            "Bearer "
            + hand_token({"alg": "HS384"}, claims(), SECRET.encode(), "sha384")
        ),
        True,
    ),
    ("rs256-with-hs256-pinned", lambda: "Bearer " + rs256(), True),
    ("expired", lambda: "Bearer " + make_token(ttl=-3600), True),
    ("expired-beyond-leeway", lambda: "Bearer " + make_token(ttl=-60), True),
    (
        "nbf-in-future",
        lambda: "Bearer " + make_token(nbf=int(time.time()) + 3600),
        True,
    ),
    (
        "iat-in-future",
        lambda: "Bearer " + make_token(iat=int(time.time()) + 3600),
        True,
    ),
    (
        "exp-missing",
        lambda: "Bearer " + hs256({"sub": SUB}),
        True,
    ),
    (
        "exp-not-a-number",
        lambda: "Bearer " + hs256({"sub": SUB, "exp": "tomorrow"}),
        True,
    ),
    (
        "sub-missing",
        lambda: "Bearer " + hs256({"exp": int(time.time()) + 60, "scope": "x"}),
        True,
    ),
    ("sub-number", lambda: "Bearer " + hs256(claims(sub=12345)), True),
    ("sub-empty", lambda: "Bearer " + hs256(claims(sub="")), True),
    ("sub-null", lambda: "Bearer " + hs256(claims(sub=None)), True),
    ("sub-true", lambda: "Bearer " + hs256(claims(sub=True)), True),
    ("sub-list", lambda: "Bearer " + hs256(claims(sub=[SUB])), True),
    ("sub-object", lambda: "Bearer " + hs256(claims(sub={"id": SUB})), True),
    ("exp-null", lambda: "Bearer " + hs256({"sub": SUB, "exp": None}), True),
    ("exp-true", lambda: "Bearer " + hs256({"sub": SUB, "exp": True}), True),
    ("nbf-not-a-number", lambda: "Bearer " + make_token(nbf="soon"), True),
    ("iat-not-a-number", lambda: "Bearer " + make_token(iat="now"), True),
    ("payload-not-an-object", lambda: "Bearer " + hs256([claims()]), True),
    (
        "signature-stripped",
        lambda: "Bearer " + make_token().rsplit(".", 1)[0] + ".",
        True,
    ),
    ("five-parts-jwe-like", lambda: "Bearer a.b.c.d.e", True),
    (
        "alg-missing",
        lambda: "Bearer " + hand_token({"typ": "JWT"}, claims(), SECRET.encode()),
        True,
    ),
    (
        "alg-lower-case",
        lambda: "Bearer " + hand_token({"alg": "hs256"}, claims(), SECRET.encode()),
        True,
    ),
    (
        "alg-none-with-a-valid-hmac",
        lambda: "Bearer " + hand_token({"alg": "none"}, claims(), SECRET.encode()),
        True,
    ),
    ("alg-NONE", lambda: "Bearer " + hand_token({"alg": "NONE"}, claims()), True),
    (
        "crit-unknown-extension",
        lambda: (
            "Bearer "
            + hs256(
                claims(),
                crit=["urn:example:must-understand"],
                **{"urn:example:must-understand": True},
            )
        ),
        True,
    ),
    ("crit-empty-list", lambda: "Bearer " + hs256(claims(), crit=[]), True),
    ("crit-not-a-list", lambda: "Bearer " + hs256(claims(), crit="exp"), True),
    ("crit-registered-header", lambda: "Bearer " + hs256(claims(), crit=["alg"]), True),
    (
        "crit-b64-unencoded-payload",
        lambda: "Bearer " + hs256(claims(), crit=["b64"], b64=False),
        True,
    ),
]


@pytest.mark.parametrize(
    ("authorization", "token_sent"),
    [pytest.param(f, sent, id=name) for name, f, sent in BAD_AUTHORIZATION],
)
def test_bad_credentials_are_401_and_write_nothing(
    client, snapshot, authorization, token_sent
):
    seed(client)
    before = snapshot()
    resp = put(client, {"Authorization": authorization()})
    error_body(resp, 401, "UNAUTHORIZED")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if token_sent:
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    else:
        assert "error=" not in resp.headers["WWW-Authenticate"]
        assert resp.get_json()["reason"] == "No Authorization Token"
    assert snapshot() == before


def test_token_signed_with_the_configured_secret_is_accepted(client):
    assert put(client, token_for()).status_code == 200
    assert client.get(PATH + SUB, headers=token_for()).status_code == 200


def test_hand_built_hs256_token_is_accepted(client):
    """The hand-built tokens above fail for their flaw, not for their build."""
    resp = put(client, {"Authorization": "Bearer " + hs256(claims())})
    assert resp.status_code == 200, resp.data


# --- aud and iss --------------------------------------------------------------

AUD = "stat-api"
ISS = "https://idp.example.org/"


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        pytest.param({"aud": AUD, "iss": ISS}, 200, id="both-right"),
        pytest.param({"aud": ["other", AUD], "iss": ISS}, 200, id="aud-list"),
        pytest.param({"aud": "other", "iss": ISS}, 401, id="wrong-aud"),
        pytest.param({"iss": ISS}, 401, id="missing-aud"),
        pytest.param({"aud": AUD, "iss": "https://evil.example/"}, 401, id="wrong-iss"),
        pytest.param({"aud": AUD}, 401, id="missing-iss"),
        pytest.param({"aud": AUD.upper(), "iss": ISS}, 401, id="aud-other-case"),
        pytest.param({"aud": [], "iss": ISS}, 401, id="aud-empty-list"),
        pytest.param({"aud": 7, "iss": ISS}, 401, id="aud-number"),
        pytest.param({"aud": AUD, "iss": ISS.rstrip("/")}, 401, id="iss-no-slash"),
        pytest.param({"aud": AUD, "iss": [ISS]}, 401, id="iss-list"),
    ],
)
def test_aud_and_iss_are_checked_when_configured(make_client, snapshot, extra, status):
    client = make_client(JWT_AUDIENCE=AUD, JWT_ISSUER=ISS)
    seed(client)
    before = snapshot()
    resp = put(client, {"Authorization": "Bearer " + hs256(claims(**extra))})
    if status == 401:
        assert_invalid_token(resp)
        assert snapshot() == before
    else:
        assert resp.status_code == 200, resp.data


def test_aud_and_iss_are_ignored_when_not_configured(client):
    headers = token_for(aud="anything", iss="anyone")
    assert put(client, headers).status_code == 200


# --- public keys --------------------------------------------------------------


def test_rs256_token_is_accepted_with_a_pem_public_key(make_client):
    client = make_client(JWT_SECRET=None, JWT_PUBLIC_KEY=public_pem(rsa_key()))
    headers = {"Authorization": "Bearer " + rs256()}
    assert put(client, headers).status_code == 200
    got = client.get(PATH + SUB, headers=headers)
    assert got.status_code == 200
    assert got.get_json()["favorites"] == ["x1"]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            lambda: hand_token(
                {"alg": "HS256", "typ": "JWT"},
                claims(),
                public_pem(rsa_key()).encode(),
            ),
            id="hs256-signed-with-the-public-pem",
        ),
        pytest.param(lambda: rs256(key_name="other"), id="rs256-other-key"),
        pytest.param(
            lambda: jwt.encode(claims(), rsa_key(), algorithm="PS256"),
            id="ps256-not-pinned",
        ),
        pytest.param(
            lambda: hand_token({"alg": "none"}, claims()),
            id="alg-none",
        ),
    ],
)
def test_pem_public_key_refuses_other_keys_and_algorithms(make_client, snapshot, token):
    client = make_client(JWT_SECRET=None, JWT_PUBLIC_KEY=public_pem(rsa_key()))
    seed(client)
    before = snapshot()
    assert_invalid_token(put(client, {"Authorization": "Bearer " + token()}))
    assert snapshot() == before


def public_key_encodings(private_key) -> dict[str, bytes]:
    """Every form a verifier might hold the public key in, as HMAC key bytes."""
    public = private_key.public_key()
    encoding, fmt = serialization.Encoding, serialization.PublicFormat
    forms = {
        "spki-pem": public.public_bytes(encoding.PEM, fmt.SubjectPublicKeyInfo),
        "spki-der": public.public_bytes(encoding.DER, fmt.SubjectPublicKeyInfo),
        "openssh": public.public_bytes(encoding.OpenSSH, fmt.OpenSSH),
        "jwk-json": json.dumps(jwk(private_key, "k1")).encode(),
    }
    forms["spki-pem-stripped"] = forms["spki-pem"].strip()
    if isinstance(public, rsa.RSAPublicKey):
        forms["pkcs1-pem"] = public.public_bytes(encoding.PEM, fmt.PKCS1)
        forms["pkcs1-der"] = public.public_bytes(encoding.DER, fmt.PKCS1)
    return forms


EC_ENCODINGS = ["spki-pem", "spki-pem-stripped", "spki-der", "openssh", "jwk-json"]
RSA_ENCODINGS = [*EC_ENCODINGS, "pkcs1-pem", "pkcs1-der"]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize(
    ("kind", "encoding"),
    [("rsa", e) for e in RSA_ENCODINGS] + [("ec", e) for e in EC_ENCODINGS],
)
def test_hmac_token_keyed_with_the_configured_public_key_is_401(
    make_client, snapshot, kind, encoding, alg
):
    """Key confusion: the public key, in any encoding, used as an HMAC secret."""
    private = rsa_key() if kind == "rsa" else ec_key()
    client = make_client(JWT_SECRET=None, JWT_PUBLIC_KEY=public_pem(private))
    seed(client)
    before = snapshot()
    key = public_key_encodings(private)[encoding]
    header = {"alg": alg, "typ": "JWT"}
    token = hand_token(header, claims(scope="stat:admin"), key, "sha" + alg[2:])
    assert_invalid_token(put(client, {"Authorization": "Bearer " + token}))
    assert snapshot() == before


def test_es256_token_is_accepted_with_an_ec_public_key(make_client):
    client = make_client(JWT_SECRET=None, JWT_PUBLIC_KEY=public_pem(ec_key()))
    token = jwt.encode(claims(), ec_key(), algorithm="ES256")
    assert put(client, {"Authorization": "Bearer " + token}).status_code == 200


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            {"JWT_SECRET": None, "JWT_ALGORITHMS": ("HS256",), "PEM": True},
            id="hs256-with-public-key",
        ),
        pytest.param({"JWT_SECRET": None}, id="no-key-at-all"),
        pytest.param({"PEM": True}, id="secret-and-public-key"),
        pytest.param({"JWT_ALGORITHMS": ("none",)}, id="alg-none-pinned"),
        pytest.param({"JWT_ALGORITHMS": ("RS256",)}, id="rs256-with-secret"),
    ],
)
def test_unusable_key_configuration_raises_config_error(
    settings, redis_client, overrides
):
    config = {**settings, **overrides}
    if config.pop("PEM", False):
        config["JWT_PUBLIC_KEY"] = public_pem(rsa_key())
    with pytest.raises(ConfigError):
        create_app(config, redis_client=redis_client)


# --- JWKS ---------------------------------------------------------------------


def jwk(private_key, kid: str) -> dict:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        key, alg = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True), "RS256"
    else:
        key, alg = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True), "ES256"
    return {**key, "kid": kid, "use": "sig", "alg": alg}


# Answers of a broken JWKS endpoint: (status, body).
BROKEN_JWKS = {
    "status-500": (500, b"{}"),
    "html": (200, b"<html><body>502 Bad Gateway</body></html>"),
    "empty-key-set": (200, b'{"keys": []}'),
    "not-an-object": (200, b"[]"),
    "unusable-key": (
        200,
        b'{"keys": [{"kty": "RSA", "kid": "k1", "n": "x", "e": "y"}]}',
    ),
}
TRICKLE_SECONDS = PROMPT + 1


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that gave up on a hung or trickling answer


class JwksServer:
    """A local JWKS endpoint whose key set and behaviour a test may change.

    ``mode``: "ok"; "hang" (answers once ``release`` is set, or after 10 s);
    "truncated" (a body shorter than its Content-Length); "trickle" (the key
    set one byte every 0.2 s, for at most TRICKLE_SECONDS); or a BROKEN_JWKS key.
    """

    def __init__(self, keys: list[dict]):
        self.keys = keys
        self.hits = 0
        self.mode = "ok"
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits += 1
                mode = owner.mode
                if mode == "hang":
                    owner.release.wait(10)
                status, data = BROKEN_JWKS.get(
                    mode, (200, json.dumps({"keys": owner.keys}).encode())
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mode == "truncated":
                    data = data[:20]
                if mode != "trickle":
                    self.wfile.write(data)
                    return
                deadline = time.monotonic() + TRICKLE_SECONDS
                for i in range(len(data)):
                    if time.monotonic() > deadline:
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)

            def log_message(self, *args):
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def stop(self) -> None:
        self.release.set()
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()


@pytest.fixture
def jwks():
    server = JwksServer([jwk(rsa_key(), "k1"), jwk(ec_key(), "e1")])
    yield server
    server.stop()


@pytest.fixture
def jwks_client(make_client, jwks):
    return make_client(JWT_SECRET=None, JWT_JWKS_URL=jwks.url)


@pytest.fixture
def clock(monkeypatch):
    """Moves the clocks of the JWKS client (cache lifetime, refetch cooldown)
    and of the service's verified-token cache."""
    shim = types.SimpleNamespace(offset=0.0)
    shim.monotonic = lambda: time.monotonic() + shim.offset
    shim.time = lambda: time.time() + shim.offset
    monkeypatch.setattr(jwt.jwks_client, "time", shim)
    monkeypatch.setattr(jwt.jwk_set_cache, "time", shim)
    monkeypatch.setattr(sys.modules["stat_service.http.auth"], "time", shim)
    return shim


def bearer_rs(kid: str, key_name="main", sub=SUB) -> dict:
    return {"Authorization": "Bearer " + rs256(sub, key_name, kid=kid)}


def test_jwks_token_with_matching_kid_is_accepted_and_keys_are_cached(
    jwks_client, jwks
):
    assert put(jwks_client, bearer_rs("k1")).status_code == 200
    es = jwt.encode(claims(), ec_key(), algorithm="ES256", headers={"kid": "e1"})
    assert put(jwks_client, {"Authorization": "Bearer " + es}).status_code == 200
    assert jwks_client.get(PATH + SUB, headers=bearer_rs("k1")).status_code == 200
    assert jwks.hits == 1


def test_jwks_rotated_key_is_accepted_without_restart(jwks_client, jwks, clock):
    assert put(jwks_client, bearer_rs("k1")).status_code == 200
    jwks.keys = [jwk(rsa_key("rotated"), "k2")]
    clock.offset += 6  # past JWT_JWKS_REFRESH_COOLDOWN (5 s), within the cache
    resp = put(jwks_client, bearer_rs("k2", "rotated"))
    assert resp.status_code == 200, resp.data


def test_jwks_key_removed_from_the_set_is_refused_once_the_cache_expires(
    jwks_client, jwks, clock
):
    assert put(jwks_client, bearer_rs("k1")).status_code == 200
    jwks.keys = [jwk(rsa_key("rotated"), "k2")]
    clock.offset += 3600  # JWT_JWKS_CACHE_SECONDS (300) and the cooldown are over
    assert put(jwks_client, bearer_rs("k2", "rotated")).status_code == 200
    assert_invalid_token(put(jwks_client, bearer_rs("k1")))


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"kid": "nope"}, id="unknown-kid"),
        pytest.param({}, id="no-kid"),
    ],
)
def test_jwks_token_without_a_known_kid_is_401(jwks_client, snapshot, headers):
    seed(jwks_client)
    before = snapshot()
    token = jwt.encode(claims(), rsa_key(), algorithm="RS256", headers=headers)
    assert_invalid_token(put(jwks_client, {"Authorization": "Bearer " + token}))
    assert snapshot() == before


@pytest.mark.parametrize("encoding", RSA_ENCODINGS)
def test_jwks_hs256_token_with_a_known_kid_is_401(jwks_client, snapshot, encoding):
    """Key confusion against a JWKS: HMAC keyed with k1's public key, any form."""
    seed(jwks_client)
    before = snapshot()
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    key = public_key_encodings(rsa_key())[encoding]
    token = hand_token(header, claims(scope="stat:admin"), key)
    assert_invalid_token(put(jwks_client, {"Authorization": "Bearer " + token}))
    assert snapshot() == before


@pytest.fixture
def hung_endpoint():
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"
    sock.close()


@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_jwks_down_is_a_prompt_503_with_retry_after(
    make_client, snapshot, request, outage
):
    if outage == "refused":
        url = f"http://127.0.0.1:{free_port()}/jwks.json"
    else:
        url = request.getfixturevalue("hung_endpoint")
    client = make_client(JWT_SECRET=None, JWT_JWKS_URL=url, JWT_JWKS_TIMEOUT=0.5)
    seed(client)
    before = snapshot()
    started = time.monotonic()
    resp = put(client, bearer_rs("k1"))
    elapsed = time.monotonic() - started
    error_body(resp, 503, "SERVICE_UNAVAILABLE")
    assert int(resp.headers["Retry-After"]) >= 0
    assert elapsed < 3
    assert snapshot() == before


def test_jwks_outage_after_a_fetch_keeps_cached_keys_working(jwks_client, jwks):
    assert put(jwks_client, bearer_rs("k1")).status_code == 200
    jwks.stop()
    assert put(jwks_client, bearer_rs("k1")).status_code == 200


@pytest.mark.parametrize(
    "mode",
    [
        "status-500",
        "truncated",
        "html",
        "empty-key-set",
        "not-an-object",
        "unusable-key",
    ],
)
def test_jwks_answer_that_is_no_usable_key_set_is_a_prompt_503(
    make_client, snapshot, jwks, mode
):
    """The key source is broken, not the token: the client should retry later."""
    jwks.mode = mode
    client = make_client(JWT_SECRET=None, JWT_JWKS_URL=jwks.url, JWT_JWKS_TIMEOUT=0.5)
    seed(client)
    before = snapshot()
    started = time.monotonic()
    resp = put(client, bearer_rs("k1"))
    elapsed = time.monotonic() - started
    error_body(resp, 503, "SERVICE_UNAVAILABLE")
    assert resp.headers["Retry-After"].isdigit()
    assert elapsed < PROMPT
    assert snapshot() == before


@pytest.fixture
def fake_client(settings):
    """Like ``make_client``, on fakeredis only: for tests whose cost is waiting."""
    fake = fakeredis.FakeRedis()

    def build(**overrides):
        app = create_app({**settings, **overrides}, redis_client=fake)
        return app.test_client()

    build.snapshot = lambda: dump(fake, settings["KEY_PREFIX"])
    yield build
    fake.close()


def test_jwks_endpoint_that_trickles_is_still_a_prompt_503(fake_client, jwks):
    jwks.mode = "trickle"  # one byte every 0.2 s: each read is within the timeout
    client = fake_client(JWT_SECRET=None, JWT_JWKS_URL=jwks.url, JWT_JWKS_TIMEOUT=0.5)
    seed(client)
    before = fake_client.snapshot()
    started = time.monotonic()
    resp = put(client, bearer_rs("k1"))
    elapsed = time.monotonic() - started
    error_body(resp, 503, "SERVICE_UNAVAILABLE")
    assert elapsed < PROMPT, elapsed
    assert fake_client.snapshot() == before


@pytest.mark.gunicorn
def test_jwks_under_gunicorn_outage_is_prompt_503_and_keys_return_without_restart(
    spawn, module_redis, jwks
):
    """Each sync worker: a hung JWKS is a prompt 503 (no worker timeout), the
    endpoint's return and then a rotated key are picked up by the running
    workers."""
    jwks.mode = "hang"
    prefix = f"stat-test:{uuid.uuid4().hex[:12]}:"
    svc = spawn(
        REDIS_URL=module_redis.url,
        KEY_PREFIX=prefix,
        JWT_JWKS_URL=jwks.url,
        JWT_JWKS_TIMEOUT="0.5",
        JWT_JWKS_REFRESH_COOLDOWN="0.5",
    ).wait_ready()
    master = svc.proc.pid
    store = redis.Redis.from_url(module_redis.url)

    def auth(kid, key_name="main"):
        return ("Authorization", "Bearer " + rs256(SUB, key_name, kid=kid))

    try:
        for reply in svc.put_on_both_workers(SUB, BODY, auth=auth("k1")):
            assert_prompt_503(reply)
        assert dump(store, prefix) == {}

        jwks.mode = "ok"
        jwks.release.set()
        for reply in svc.put_on_both_workers(SUB, BODY, auth=auth("k1")):
            assert reply.status == 200, reply

        jwks.keys = [jwk(rsa_key("rotated"), "k2")]
        time.sleep(0.6)  # past JWT_JWKS_REFRESH_COOLDOWN since each worker's fetch
        rotated = auth("k2", "rotated")
        doc = {"favorites": ["after-rotation"]}
        for reply in svc.put_on_both_workers(SUB, doc, auth=rotated):
            assert reply.status == 200, reply
        for reply in svc.get_on_both_workers(SUB, auth=rotated):
            assert reply.json()["favorites"] == ["after-rotation"], reply
    finally:
        store.close()
    log = svc.log()
    assert "WORKER TIMEOUT" not in log, log
    assert svc.proc.pid == master and svc.proc.poll() is None, log


# --- authorization --------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_token_for_one_subscriber_is_403_on_another_and_reveals_nothing(
    client, snapshot, method
):
    seed(client, OTHER)
    before = snapshot()
    headers = token_for(SUB)
    resp = client.open(PATH + OTHER, method=method, json=BODY, headers=headers)
    payload = error_body(resp, 403, "FORBIDDEN")
    for secret in (OTHER, "f1", "f2", "a1", "1764000"):
        assert secret.encode() not in resp.data
    # Same answer whether or not the other subscriber has data.
    empty = client.open(
        PATH + "nobody@example.org", method=method, json=BODY, headers=headers
    )
    assert empty.status_code == 403
    assert empty.get_json() == payload
    assert snapshot() == before


CROSS_SUBSCRIBER = [
    pytest.param("GET", "", None, 403, id="GET"),
    pytest.param("HEAD", "", None, 403, id="HEAD"),
    pytest.param("PUT", "", BODY, 403, id="PUT-delta"),
    pytest.param("PUT", "?isDelta=false", {"favorites": []}, 403, id="PUT-overwrite"),
    pytest.param("PUT", "", {**BODY, "user_id": OTHER}, 403, id="PUT-with-user_id"),
    pytest.param("DELETE", "", None, 403, id="DELETE"),
    pytest.param("POST", "", BODY, 405, id="POST"),
    pytest.param("PATCH", "", BODY, 405, id="PATCH"),
    pytest.param("OPTIONS", "", None, 405, id="OPTIONS"),
]


@pytest.mark.parametrize(("method", "query", "doc", "status"), CROSS_SUBSCRIBER)
def test_token_for_one_subscriber_reaches_nothing_of_another_by_any_method(
    client, snapshot, method, query, doc, status
):
    seed(client, OTHER)
    before = snapshot()
    resp = client.open(
        PATH + OTHER + query, method=method, json=doc, headers=token_for(SUB)
    )
    assert resp.status_code == status, resp.data
    if method == "HEAD":
        assert resp.data == b""
    else:
        error_body(resp, status, "FORBIDDEN" if status == 403 else "METHOD_NOT_ALLOWED")
    # Random ids (X-Request-ID) could hold "a1" or "f2" by chance.
    headers = "".join(v for k, v in resp.headers if k.lower() != "x-request-id")
    leaked = resp.data + headers.encode()
    for secret in (OTHER, "f1", "f2", "a1", "1764000"):
        assert secret.encode() not in leaked
    assert snapshot() == before


@pytest.mark.parametrize(
    "raw_id",
    [
        SUB.upper(),
        "User@example.org",
        SUB + "%20",
        "%20" + SUB,
        SUB + "%C2%A0",
        SUB + "/",
        SUB + "%2F",
        SUB + ".evil.example",
        "x" + SUB,
    ],
)
def test_token_does_not_reach_ids_that_only_look_like_its_own(client, snapshot, raw_id):
    seed(client)
    before = snapshot()
    for method in ("GET", "PUT", "DELETE"):
        resp = client.open(PATH + raw_id, method=method, json=BODY, headers=token_for())
        error_body(resp, 403, "FORBIDDEN")
    assert snapshot() == before
    # The same id percent-encoded is the same subscriber.
    resp = client.get(PATH + "user%40example.org", headers=token_for())
    assert resp.status_code == 200
    assert resp.get_json()["favorites"] == ["f1", "f2"]


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param({"scope": "stat:admin other"}, id="scope-first"),
        pytest.param({"scope": "other stat:admin"}, id="scope-last"),
        pytest.param({"scp": ["stat:admin"]}, id="scp-list"),
        pytest.param({"scp": ["read", "stat:admin"]}, id="scp-list-second"),
    ],
)
def test_admin_scope_reaches_any_subscriber(client, scope):
    seed(client, OTHER)
    headers = token_for("backoffice-job", **scope)
    resp = client.get(PATH + OTHER, headers=headers)
    assert resp.status_code == 200
    assert resp.get_json()["favorites"] == ["f1", "f2"]
    assert put(client, headers, sub=OTHER).status_code == 200
    assert client.delete(PATH + OTHER, headers=headers).status_code == 204
    assert client.get(PATH + OTHER, headers=headers).get_json()["favorites"] == []


def test_custom_admin_scope_is_honoured_and_replaces_the_default(make_client):
    client = make_client(JWT_ADMIN_SCOPE="backoffice:all")
    seed(client, OTHER)
    custom = token_for("job", scope="read backoffice:all")
    assert client.get(PATH + OTHER, headers=custom).status_code == 200
    default = token_for("job", scope="stat:admin")
    error_body(client.get(PATH + OTHER, headers=default), 403, "FORBIDDEN")


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param({"scope": "stat:admin2"}, id="suffix"),
        pytest.param({"scope": "xstat:admin"}, id="prefix"),
        pytest.param({"scope": "stat:administrator"}, id="longer"),
        pytest.param({"scope": "STAT:ADMIN"}, id="other-case"),
        pytest.param({"scp": ["stat:admin2"]}, id="scp-suffix"),
        pytest.param({"scp": ["stat:admin other"]}, id="scp-item-with-space"),
        pytest.param({"stat:admin": True}, id="claim-name"),
    ],
)
def test_scope_that_only_contains_the_admin_string_is_not_admin(
    client, snapshot, scope
):
    seed(client, OTHER)
    before = snapshot()
    headers = token_for("job", **scope)
    error_body(client.get(PATH + OTHER, headers=headers), 403, "FORBIDDEN")
    error_body(put(client, headers, sub=OTHER), 403, "FORBIDDEN")
    assert snapshot() == before


# --- authentication comes first -------------------------------------------------


def _request(kind):
    """(method, path, kwargs) of a request with one flaw besides its credentials."""
    json_ct = {"content_type": "application/json"}
    return {
        "malformed-body": ("PUT", PATH + SUB, {"data": b"{nope", **json_ct}),
        "wrong-types": ("PUT", PATH + SUB, {"json": {"favorites": "x"}}),
        "unknown-field": ("PUT", PATH + SUB, {"json": {"favourites": []}}),
        "bad-query": ("PUT", PATH + SUB + "?isDelta=yes", {"json": BODY}),
        "query-on-get": ("GET", PATH + SUB + "?x=1", {}),
        "bad-content-type": (
            "PUT",
            PATH + SUB,
            {"data": json.dumps(BODY), "content_type": "text/plain"},
        ),
        "subscriber-id-%FF": ("GET", PATH + "%FF", {}),
        "subscriber-id-%00": ("DELETE", PATH + "%00", {}),
        "subscriber-id-empty": ("GET", PATH, {}),
        "subscriber-id-too-long": ("GET", PATH + "u" * 300, {}),
        "body-too-large": (
            "PUT",
            PATH + SUB,
            {"data": b'{"favorites": []' + b" " * (2 << 20) + b"}", **json_ct},
        ),
        "too-many-items": (
            "PUT",
            PATH + SUB,
            {"json": {"favorites": [f"x{i}" for i in range(6000)]}},
        ),
    }[kind]


FLAWS = [
    "malformed-body",
    "wrong-types",
    "unknown-field",
    "bad-query",
    "query-on-get",
    "bad-content-type",
    "subscriber-id-%FF",
    "subscriber-id-%00",
    "subscriber-id-empty",
    "subscriber-id-too-long",
    "body-too-large",
    "too-many-items",
]


@pytest.mark.parametrize("flaw", FLAWS)
def test_anonymous_request_is_401_whatever_else_is_wrong(client, snapshot, flaw):
    seed(client)
    before = snapshot()
    method, path, kwargs = _request(flaw)
    resp = client.open(path, method=method, **kwargs)
    assert resp.status_code == 401, resp.data
    assert resp.get_json() == NO_TOKEN_BODY
    assert snapshot() == before


@pytest.mark.parametrize("flaw", FLAWS)
def test_expired_token_is_401_whatever_else_is_wrong(client, snapshot, flaw):
    seed(client)
    before = snapshot()
    method, path, kwargs = _request(flaw)
    headers = token_for(ttl=-3600)
    resp = client.open(path, method=method, headers=headers, **kwargs)
    assert_invalid_token(resp)
    assert snapshot() == before


@pytest.mark.parametrize(
    "flaw",
    ["malformed-body", "wrong-types", "bad-query", "bad-content-type", "query-on-get"],
)
def test_token_for_another_subscriber_is_403_whatever_else_is_wrong(
    client, snapshot, flaw
):
    seed(client)
    before = snapshot()
    method, path, kwargs = _request(flaw)
    resp = client.open(path, method=method, headers=token_for(OTHER), **kwargs)
    error_body(resp, 403, "FORBIDDEN")
    assert snapshot() == before


def test_cached_token_is_refused_once_it_expires(make_client):
    """The verified-token cache never outlives the token's exp."""
    client = make_client(JWT_LEEWAY=0)
    exp = int(time.time()) + 2
    headers = {"Authorization": "Bearer " + make_token(exp=exp)}
    assert put(client, headers).status_code == 200
    assert put(client, headers).status_code == 200  # served from the cache
    while time.time() < exp + 0.2:
        time.sleep(0.1)
    resp = put(client, headers)
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_cached_token_still_reaches_only_its_own_subscriber(make_client):
    client = make_client()
    headers = bearer(SUB)
    assert put(client, headers).status_code == 200
    assert put(client, headers, sub=OTHER).status_code == 403


def test_token_cache_is_bounded(make_client):
    client = make_client(JWT_CACHE_SIZE=3)
    tokens = [make_token(jti=str(i)) for i in range(10)]
    for token in tokens:
        assert put(client, {"Authorization": "Bearer " + token}).status_code == 200
    cache = client.application.extensions["stat_auth"]._cache
    assert list(cache._entries) == tokens[-3:]


def test_token_cache_can_be_turned_off(make_client):
    client = make_client(JWT_CACHE_SECONDS=0)
    assert put(client, bearer(SUB)).status_code == 200
    assert client.application.extensions["stat_auth"]._cache._entries == {}


def test_token_whose_exp_is_a_numeric_string_is_401(client, snapshot):
    """PyJWT accepts "exp": "1999999999"; RFC 7519 wants a NumericDate."""
    seed(client)
    before = snapshot()
    token = jwt.encode(
        {"sub": SUB, "exp": str(int(time.time()) + 60)}, SECRET, algorithm="HS256"
    )
    resp = put(client, {"Authorization": f"Bearer {token}"})
    assert_invalid_token(resp)
    assert snapshot() == before
