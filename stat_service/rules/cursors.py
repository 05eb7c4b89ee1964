"""Page cursors: opaque, signed, bound to one list of one subscriber (no Flask).

A cursor says where the previous page ended, never an offset (keyset
paging), so a walk stays right while items are added or removed:

- favorites: the position (score) of the page's last favorite;
- watch, continue: the last record's (last_played_on or -1, asset id).

Layout before base64url (no padding): version (1 byte), list (1 byte),
issued at (4 bytes, unix seconds), the position (favorites: a double;
records: a signed 64-bit last_played_on, then the asset id in UTF-8), then
16 bytes of HMAC-SHA256 over all of that and the subscriber id. A cursor
made for another list or subscriber, altered, or not made with this key is
refused; so is one older than ``max_age`` seconds (a stale one). A cursor
whose own item has gone since still works: it names a place, not an item.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import struct
import time

from .schemas import MAX_ID_LENGTH

VERSION = 1
LISTS = {"fav": 1, "watch": 2, "continue": 3}
MAC_BYTES = 16
_HEAD = struct.Struct(">BBI")
_POSITION = struct.Struct(">d")
_PLAYED = struct.Struct(">q")
# The longest cursor: a record's, whose asset id is 256 characters of 4
# UTF-8 bytes each, in base64 (4 characters per 3 bytes, no padding): 1,406.
MAX_CHARS = -(-(_HEAD.size + _PLAYED.size + 4 * MAX_ID_LENGTH + MAC_BYTES) * 4 // 3)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_CLOCK_SKEW = 300  # seconds a cursor may seem to come from the future


class CursorError(ValueError):
    """Not a cursor this service made for this list and subscriber, or stale."""


def cursor_key(settings) -> bytes:
    """The signing key: CURSOR_SECRET, else derived from the JWT key setting.

    Derived keys differ from the JWT secret itself (HMAC with a label). With
    a public key or a JWKS URL there is no secret to derive from, so such
    cursors could be made by anyone who knows the key setting: they can still
    only page through the caller's own list, and CURSOR_SECRET closes it.
    """
    secret = settings.CURSOR_SECRET or (
        settings.JWT_SECRET or settings.JWT_PUBLIC_KEY or settings.JWT_JWKS_URL or ""
    )
    label = b"stat_service page cursor\x00" + settings.KEY_PREFIX.encode()
    return hmac.new(secret.encode(), label, hashlib.sha256).digest()


class Cursors:
    """Makes and reads the ``next`` / ``after`` values of section 9's pages."""

    def __init__(self, key: bytes, max_age: int, clock=time.time):
        self._key = key
        self.max_age = max_age
        self._clock = clock

    def make(self, kind: str, subscriber_id: str, position) -> str:
        """``position``: a float (favorites) or (last_played_on or -1, asset id)."""
        head = _HEAD.pack(VERSION, LISTS[kind], int(self._clock()))
        if kind == "fav":
            body = _POSITION.pack(position)
        else:
            played, asset_id = position
            body = _PLAYED.pack(played) + asset_id.encode()
        payload = head + body
        return _encode(payload + self._mac(payload, subscriber_id))

    def read(self, kind: str, subscriber_id: str, text: str):
        """The position of a cursor made by ``make`` for the same list and
        subscriber; CursorError otherwise."""
        if not 0 < len(text) <= MAX_CHARS or not _BASE64URL.fullmatch(text):
            raise CursorError(_NOT_OURS)
        try:
            token = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise CursorError(_NOT_OURS) from None
        if _encode(token) != text:
            # The last character's unused bits: the same bytes, other text.
            raise CursorError(_NOT_OURS)
        payload, mac = token[:-MAC_BYTES], token[-MAC_BYTES:]
        if len(payload) < _HEAD.size or not hmac.compare_digest(
            mac, self._mac(payload, subscriber_id)
        ):
            raise CursorError(_NOT_OURS)
        version, list_code, issued = _HEAD.unpack_from(payload)
        if version != VERSION or list_code != LISTS[kind]:
            raise CursorError(_NOT_OURS)
        now = self._clock()
        if issued > now + _CLOCK_SKEW:
            raise CursorError(_NOT_OURS)
        if now - issued > self.max_age:
            raise CursorError(
                "after: this cursor has expired; start again from the first "
                "page (without after)"
            )
        body = payload[_HEAD.size :]
        try:
            if kind == "fav":
                (position,) = _POSITION.unpack(body)
                if not math.isfinite(position):
                    raise ValueError
                return position
            (played,) = _PLAYED.unpack_from(body)
            return played, body[_PLAYED.size :].decode()
        except (struct.error, ValueError):  # signed, so never expected
            raise CursorError(_NOT_OURS) from None

    def _mac(self, payload: bytes, subscriber_id: str) -> bytes:
        message = payload + b"\x00" + subscriber_id.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()[:MAC_BYTES]


def _encode(token: bytes) -> str:
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode()


_NOT_OURS = (
    "after: not a cursor of this list: pass the next value of the previous "
    "page of the same list and subscriber"
)
