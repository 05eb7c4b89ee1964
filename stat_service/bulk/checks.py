"""Each entry checked like a request: a validated body, or the API's error body.

JSON Lines: a line is checked like a request: at most ``MAX_BODY_BYTES``
bytes (else PAYLOAD_TOO_LARGE), strict JSON, a ``subscriber_id`` string of 1
to 256 characters without control characters, at most ``MAX_ITEMS``
favorites and view_data entries (else PAYLOAD_TOO_LARGE), then the body
schema. A reject is ``{"line", "subscriber_id" (null when unknown),
"message", "reason", "errors" (schema errors only)}``, the API's error body
for the same content (an over-long line is not parsed: its id is null).

CSV: an empty cell is an absent field; numbers are read as JSON would read
them (``12`` an int, ``3.5`` a float; anything else stays text and the
schema rejects it with the API's message); ``favorite`` is ``true``,
``false`` (any case) or empty. A subscriber's rows make one body: every row
is a ``view_data`` entry, in row order (a later row of the same asset wins,
as in a PUT), except a row with ``favorite=true`` and no other field, which
only names a favorite ("My List" without viewing); favorites are the
``favorite=true`` rows in row order, and are present in the body (replacing
the stored ones in delta mode) when any of the subscriber's rows has a
non-empty ``favorite`` cell. A row with only ``subscriber_id`` and
``asset_id`` makes an empty record. CSV cannot remove a field in delta mode.
A CSV reject is one subscriber's rows: ``line`` and ``last_line``, and
``view_data[i]`` in its errors is the i-th of them that makes a record.
"""

from __future__ import annotations

from marshmallow import ValidationError

from ..errors import MESSAGES, json_keys, validation_reason
from ..rules import fastpath, strictjson
from ..rules.schemas import load_body, subscriber_id_problem, too_many_items
from .sources import SURROGATE, TOO_LARGE, CsvLayout

# --- reject details ------------------------------------------------------------


def reject(line: int, subscriber_id, status: int, reason: str, errors=None) -> dict:
    """The error body the API would give, with where it was found."""
    detail = {
        "line": line,
        "subscriber_id": subscriber_id if isinstance(subscriber_id, str) else None,
        "message": MESSAGES[status],
        "reason": reason,
    }
    if errors is not None:
        detail["errors"] = errors
    return detail


def _schema_reject(line: int, subscriber_id, exc: ValidationError) -> dict:
    return reject(
        line,
        subscriber_id,
        400,
        validation_reason(exc.messages),
        errors=json_keys(exc.messages),
    )


# --- validation ------------------------------------------------------------------


class JsonlValidator:
    """One JSON line -> (subscriber id, validated body) or a reject detail."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items = max_items
        self.max_bytes = max_bytes

    def __call__(self, entry):
        line, _, _, raw = entry
        if raw is TOO_LARGE:
            return reject(line, None, 413, f"body larger than {self.max_bytes} bytes")
        taken = fastpath.load_line(raw, self.max_items)
        if taken is not fastpath.NO:
            return taken
        try:
            data = strictjson.loads(raw)
        except strictjson.JSONBodyError as exc:
            return reject(line, None, 400, str(exc))
        if not isinstance(data, dict):
            try:
                load_body(data, None)
            except ValidationError as exc:
                return _schema_reject(line, None, exc)
            raise AssertionError("load_body accepted a non-object")  # pragma: no cover
        if "subscriber_id" not in data:
            return reject(line, None, 400, "subscriber_id is required")
        subscriber_id = data.pop("subscriber_id")
        problem = subscriber_id_problem(subscriber_id)
        if problem:
            return reject(line, subscriber_id, 400, problem)
        problem = too_many_items(data, self.max_items)
        if problem:
            return reject(line, subscriber_id, 413, problem)
        try:
            return subscriber_id, load_body(data, subscriber_id)
        except ValidationError as exc:
            return _schema_reject(line, subscriber_id, exc)


def _number(text: str):
    """A cell as JSON would read it; text that is no JSON number stays text."""
    if len(text) > strictjson.MAX_FLOAT_CHARS or not strictjson.JSON_NUMBER.fullmatch(
        text
    ):
        return text
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)


class CsvValidator:
    """One subscriber's CSV rows -> (subscriber id, validated body) or a reject."""

    def __init__(self, max_items: int, layout: CsvLayout):
        self.max_items = max_items
        self.layout = layout

    def __call__(self, entry):
        first, last, _, group = entry
        subscriber_id = group.subscriber_id

        def fail(status, reason, errors=None):
            detail = reject(first, subscriber_id, status, reason, errors)
            detail["last_line"] = last
            return detail

        # The order of the API: parsing, the id, the sizes, then the schema.
        if group.reappears:
            return fail(
                400,
                f"the rows of subscriber {subscriber_id!r} are not contiguous: they "
                "start again here after other subscribers' rows (group the file "
                "by subscriber_id)",
            )
        if group.problems:
            reason = "; ".join(group.problems[:5])
            if len(group.problems) > 5:
                reason += f"; and {len(group.problems) - 5} more"
            return fail(400, reason)
        if SURROGATE.search(subscriber_id):
            return fail(400, "subscriber_id is not valid UTF-8")
        if subscriber_id == "":
            return fail(400, "subscriber_id is required")
        problem = subscriber_id_problem(subscriber_id)
        if problem:
            return fail(400, problem)
        counts = {"favorites": group.favorites, "view_data": group.records}
        for name, count in counts.items():
            if count > self.max_items:
                return fail(
                    413, f"{name} has {count} entries, more than {self.max_items}"
                )
        layout = self.layout
        favorites: list[str] = []
        view_data: list[dict] = []
        favorites_given = False
        for _, cells in group.rows:
            asset = cells[layout.asset]
            record = {"asset_id": asset}
            for name, index in layout.numbers:
                text = cells[index]
                if text:
                    record[name] = _number(text)
            if layout.favorite is not None:
                favorite = cells[layout.favorite].lower()
                if favorite == "true":
                    favorites.append(asset)
                    favorites_given = True
                    if len(record) == 1:
                        continue  # only a favorite, no viewing
                elif favorite == "false":
                    favorites_given = True
            view_data.append(record)
        body: dict = {}
        if favorites_given:
            body["favorites"] = favorites
        if view_data:
            body["view_data"] = view_data
        if fastpath.check_body(body) >= 0:
            return subscriber_id, body
        try:
            return subscriber_id, load_body(body, subscriber_id)
        except ValidationError as exc:
            return fail(400, validation_reason(exc.messages), json_keys(exc.messages))
