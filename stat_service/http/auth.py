"""Bearer tokens (PyJWT, pinned algorithms) and per-subscriber authorization."""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path

import jwt
from flask import current_app, g, request

from ..config import ConfigError, Settings
from ..errors import ApiError

log = logging.getLogger("stat_service.auth")

_HMAC = ("HS256", "HS384", "HS512")
_ASYMMETRIC = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
REALM = 'Bearer realm="stat_service"'


class TokenVerifier:
    """Decodes tokens with the configured key; built once per app."""

    def __init__(self, settings: Settings):
        configured = [
            name
            for name in ("JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_JWKS_URL")
            if getattr(settings, name)
        ]
        if len(configured) != 1:
            raise ConfigError(
                "set exactly one of JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL "
                f"(found: {', '.join(configured) or 'none'}); for a local run, "
                "make run uses a development secret (JWT_DEV_SECRET_FILE)"
            )
        self.audience = settings.JWT_AUDIENCE
        self.issuer = settings.JWT_ISSUER
        self.leeway = settings.JWT_LEEWAY
        self.admin_scope = settings.JWT_ADMIN_SCOPE
        self.retry_after = settings.RETRY_AFTER_SECONDS
        self._jwks = None
        algorithms = settings.JWT_ALGORITHMS
        if settings.JWT_SECRET:
            self._key = settings.JWT_SECRET
            algorithms = algorithms or ("HS256",)
            allowed = _HMAC
        elif settings.JWT_PUBLIC_KEY:
            self._key, default = _load_public_key(settings.JWT_PUBLIC_KEY)
            algorithms = algorithms or (default,)
            allowed = _ASYMMETRIC
        else:
            self._key = None
            # The key set is cached for JWT_JWKS_CACHE_SECONDS; no per-kid
            # cache (cache_keys), which would keep a revoked key for ever.
            self._jwks = _JWKSClient(
                settings.JWT_JWKS_URL,
                cache_keys=False,
                cache_jwk_set=True,
                lifespan=settings.JWT_JWKS_CACHE_SECONDS,
                timeout=settings.JWT_JWKS_TIMEOUT,
                cooldown_duration=settings.JWT_JWKS_REFRESH_COOLDOWN,
            )
            algorithms = algorithms or ("RS256", "ES256")
            allowed = _ASYMMETRIC
        bad = [a for a in algorithms if a not in allowed]
        if bad:
            # Pinning an HMAC algorithm to a public key is the key-confusion attack.
            raise ConfigError(
                f"JWT_ALGORITHMS {bad} cannot be used with {configured[0]}"
            )
        self.algorithms = list(algorithms)
        self._options = {"require": ["exp", "sub"], "verify_aud": bool(self.audience)}
        self._cache = TokenCache(settings.JWT_CACHE_SIZE, settings.JWT_CACHE_SECONDS)

    def decode(self, token: str) -> dict:
        """The verified claims; raise ApiError 401 (or 503 if JWKS is down)."""
        claims = self._cache.get(token)
        if claims is None:
            claims = self._verify(token)
            self._cache.put(token, claims, claims["exp"] + self.leeway)
        return claims

    def _verify(self, token: str) -> dict:
        try:
            key = self._signing_key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self._options,
            )
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("JWKS endpoint unavailable: %s", exc)
            raise ApiError(
                503,
                "token keys temporarily unavailable",
                headers={"Retry-After": str(self.retry_after)},
            ) from None
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as exc:
            raise invalid_token(_describe(exc)) from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise invalid_token("sub must be a non-empty string")
        if type(claims["exp"]) not in (int, float):
            # PyJWT also accepts a numeric string; RFC 7519 says NumericDate.
            raise invalid_token("exp must be a number")
        return claims

    def _signing_key(self, token: str):
        if self._jwks is None:
            return self._key
        return self._jwks.get_signing_key_from_jwt(token).key

    def is_admin(self, claims: dict) -> bool:
        scopes = claims.get("scope")
        granted = set(scopes.split()) if isinstance(scopes, str) else set()
        scp = claims.get("scp")
        if isinstance(scp, list):
            granted.update(s for s in scp if isinstance(s, str))
        elif isinstance(scp, str):
            granted.update(scp.split())
        return self.admin_scope in granted


class _JWKSClient(jwt.PyJWKClient):
    """A fetch bounded as a whole, and every unusable answer a connection error."""

    def fetch_data(self):
        outcome = {}

        def run():
            try:
                outcome["data"] = super(_JWKSClient, self).fetch_data()
            except jwt.PyJWKClientConnectionError as exc:
                outcome["error"] = exc
            except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError) as exc:
                outcome["error"] = jwt.PyJWKClientConnectionError(
                    f"unusable JWKS answer: {exc}"
                )
            except Exception as exc:  # e.g. a reset while the answer is read
                outcome["error"] = jwt.PyJWKClientConnectionError(
                    f"JWKS fetch failed: {type(exc).__name__}: {exc}"
                )

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            raise jwt.PyJWKClientConnectionError("JWKS fetch took too long")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["data"]


class TokenCache:
    """Verified claims by token, bounded in size and age, never past ``exp``.

    Verifying a signature costs more than the rest of a small request, and
    apps send the same token for many requests. Only tokens that passed
    every check are kept, each until the earlier of its ``exp`` (plus the
    leeway) and ``ttl`` seconds from now, so a key removed from a JWKS stops
    working within ``ttl``. ``ttl`` or ``size`` of 0 turns the cache off.
    """

    def __init__(self, size: int, ttl: float):
        self.size = size
        self.ttl = ttl
        self._entries: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()  # gthread workers share one cache

    def get(self, token: str) -> dict | None:
        # Never mutates: put() iterates the dict under its lock, and an
        # expired entry is simply replaced or evicted later.
        entry = self._entries.get(token)
        if entry is None or entry[0] <= time.time():
            return None
        return entry[1]

    def put(self, token: str, claims: dict, expires_at: float) -> None:
        if self.size <= 0 or self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.size:
                # Drop the oldest entry (dicts keep insertion order).
                self._entries.pop(next(iter(self._entries)), None)
            self._entries[token] = (min(expires_at, time.time() + self.ttl), claims)


def _load_public_key(value: str):
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = value if "-----BEGIN" in value else Path(value).read_text()
    try:
        key = load_pem_public_key(text.encode())
    except ValueError as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, "EdDSA"
    raise ConfigError("JWT_PUBLIC_KEY must be an RSA, EC or Ed25519 public key")


def _describe(exc: Exception) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token audience not accepted"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer not accepted"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm not accepted"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature invalid"
    return "token invalid"


def invalid_token(description: str) -> ApiError:
    return ApiError(
        401,
        description,
        headers={
            "WWW-Authenticate": (
                f'{REALM}, error="invalid_token", error_description="{description}"'
            )
        },
    )


def bearer_token(header: str) -> str:
    """The token of an Authorization header; ApiError 401 when there is none."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        # No bearer credentials at all: no error code (RFC 6750, section 3.1).
        raise ApiError(
            401, "No Authorization Token", headers={"WWW-Authenticate": REALM}
        )
    if " " in token or "," in token:
        raise invalid_token("malformed Authorization header (expected: Bearer <token>)")
    return token


def authenticate() -> None:
    """Verify the bearer token (401 otherwise); its claims go on ``g``."""
    verifier: TokenVerifier = current_app.extensions["stat_auth"]
    g.claims = verifier.decode(bearer_token(request.headers.get("Authorization", "")))
    g.is_admin = verifier.is_admin(g.claims)


def require_token(view):
    """Authenticate the request before anything else."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        authenticate()
        return view(*args, **kwargs)

    return wrapper


def authorize(subscriber_id: str) -> None:
    """The token's subject is the subscriber, or the token has the admin scope."""
    if g.claims["sub"] != subscriber_id and not g.is_admin:
        raise not_granted()


def not_granted() -> ApiError:
    """The 403 of a token that does not grant access to the subscriber."""
    return ApiError(
        403,
        "token does not grant access to this subscriber",
        headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope"'},
    )
