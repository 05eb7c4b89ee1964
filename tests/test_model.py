"""Model-based test: random PUT/GET/DELETE sequences against a reference model.

A hypothesis state machine drives the HTTP API (both backends, via the
``client`` fixture) with random requests for several subscribers and checks,
after every step, that GET answers exactly what a small reference model of
API.md sections 1-3 predicts. The model is written here from the contract,
without any helper of ``stat_service``.

Run it longer by hand with environment variables:

    STAT_MODEL_EXAMPLES  number of request sequences (default 40)
    STAT_MODEL_STEPS     steps per sequence (default 30)

e.g. ``STAT_MODEL_EXAMPLES=2000 STAT_MODEL_STEPS=60 pytest tests/test_model.py``.
"""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import quote

from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import PATH, bearer

EXAMPLES = int(os.environ.get("STAT_MODEL_EXAMPLES", "40"))
STEPS = int(os.environ.get("STAT_MODEL_STEPS", "30"))

# Ids that differ only by case, and one with braces, "/" (sent as %2F) and "%".
SUBSCRIBERS = ("alice@example.org", "Alice@example.org", "{x}:a/b c%")
# Record separators, and ids whose code-point order differs from their UTF-16
# order (U+FF5E < U+1F600), for the asset_id tie-break.
ASSETS = ("a", "b", "B", "a1", "-", "x|y", "{t}", "é", "\uff5e", "\U0001f600")
INT_FIELDS = ("play_count", "view_time", "pause_time")

# A long run outlives a 60-second token, so the admin token lives long.
ADMIN = bearer("back-office-job", admin=True, ttl=24 * 3600)

asset_ids = st.sampled_from(ASSETS)
counts = st.sampled_from([0, 1, 7, 3600, 2**53 - 1]) | st.integers(0, 2**53 - 1)
# Few distinct times, so ties (broken by asset id) are frequent.
played_on = st.sampled_from([0, 1, 1764000000000, 1764000000001, 2**53 - 1])
ratings = st.sampled_from([0, 1, 3, 5, 0.0, 0.1, 2.5, 3.5, 5.0]) | st.floats(
    0, 5, allow_nan=False, allow_infinity=False
)
records = st.fixed_dictionaries(
    {"asset_id": asset_ids},
    optional={
        **{name: counts | st.none() for name in INT_FIELDS},
        "last_played_on": played_on | st.none(),
        "user_rating": ratings | st.none(),
    },
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "favorites": st.lists(asset_ids, max_size=6),
        "view_data": st.lists(records, max_size=6),
    },
)
# None: no query string (delta is the default).
delta_params = st.sampled_from([None, "true", "TRUE"])
overwrite_params = st.sampled_from(["false", "False"])


class ReferenceModel:
    """One subscriber's history as API.md describes it."""

    def __init__(self):
        self.favorites: list[str] = []
        self.assets: dict[str, dict] = {}

    def put(self, body: dict, *, delta: bool) -> None:
        if not delta:
            self.favorites, self.assets = [], {}
        if "favorites" in body:
            kept: list[str] = []
            for guid in body["favorites"]:
                if guid not in kept:
                    kept.append(guid)
            self.favorites = kept
        for obj in body.get("view_data", []):
            record = self.assets.setdefault(obj["asset_id"], {})
            for name, value in obj.items():
                if name == "asset_id":
                    continue
                if value is not None:
                    record[name] = value
                elif delta:  # null removes in delta mode, is absent in overwrite
                    record.pop(name, None)

    def view_data(self) -> list[dict]:
        played = [a for a in self.assets.items() if "last_played_on" in a[1]]
        never = [a for a in self.assets.items() if "last_played_on" not in a[1]]
        played.sort(key=lambda item: item[0])
        played.sort(key=lambda item: item[1]["last_played_on"], reverse=True)
        never.sort(key=lambda item: item[0])
        return [{"asset_id": a, **fields} for a, fields in played + never]


def exact(value):
    """Comparable form in which 3 and 3.0 (and -0.0 and 0.0) differ."""
    if isinstance(value, dict):
        return {key: exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [exact(item) for item in value]
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    return value


def state_machine(client):
    class StatApiMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            # Each sequence gets its own subscribers, so examples never share data.
            run = uuid.uuid4().hex[:8]
            self.ids = {name: f"{run}-{name}" for name in SUBSCRIBERS}
            self.models = {name: ReferenceModel() for name in SUBSCRIBERS}

        def path(self, name: str) -> str:
            return PATH + quote(self.ids[name], safe="@")

        @rule(
            name=st.sampled_from(SUBSCRIBERS),
            body=bodies,
            is_delta=delta_params,
            with_user_id=st.booleans(),
            ascii_only=st.booleans(),
        )
        def put_delta(self, name, body, is_delta, with_user_id, ascii_only):
            self._put(name, body, is_delta, with_user_id, ascii_only)

        @rule(
            name=st.sampled_from(SUBSCRIBERS),
            body=bodies,
            is_delta=overwrite_params,
            with_user_id=st.booleans(),
            ascii_only=st.booleans(),
        )
        def put_overwrite(self, name, body, is_delta, with_user_id, ascii_only):
            self._put(name, body, is_delta, with_user_id, ascii_only)

        def _put(self, name, body, is_delta, with_user_id, ascii_only):
            delta = is_delta is None or is_delta.lower() == "true"
            if with_user_id:
                body = {"user_id": self.ids[name], **body}
            url = self.path(name) + ("" if is_delta is None else f"?isDelta={is_delta}")
            response = client.put(
                url,
                data=json.dumps(body, ensure_ascii=ascii_only).encode(),
                headers={**ADMIN, "Content-Type": "application/json"},
            )
            model = self.models[name]
            model.put(body, delta=delta)
            assert response.status_code == 200, response.get_json()
            assert response.get_json() == {
                "result": "success",
                "subscriber_id": self.ids[name],
                "is_delta": delta,
                "favorites": len(model.favorites),
                "view_data": len({o["asset_id"] for o in body.get("view_data", [])}),
            }
            self.check(name)

        # Erasing empty histories over and over would crowd out the writes.
        @precondition(
            lambda self: any(m.favorites or m.assets for m in self.models.values())
        )
        @rule(name=st.sampled_from(SUBSCRIBERS))
        def delete(self, name):
            response = client.delete(self.path(name), headers=ADMIN)
            self.models[name] = ReferenceModel()
            assert response.status_code == 204
            self.check(name)

        def check(self, name):
            model = self.models[name]
            response = client.get(self.path(name), headers=ADMIN)
            assert response.status_code == 200, response.get_json()
            expected = {
                "result": "success",
                "subscriber_id": self.ids[name],
                "favorites": model.favorites,
                "view_data": model.view_data(),
            }
            assert exact(response.get_json()) == exact(expected)

        @rule(name=st.sampled_from(SUBSCRIBERS))
        def get(self, name):
            self.check(name)

        def teardown(self):
            for name in SUBSCRIBERS:
                client.delete(self.path(name), headers=ADMIN)

    return StatApiMachine


def test_random_requests_leave_the_state_the_reference_model_predicts(client, snapshot):
    run_state_machine_as_test(
        state_machine(client),
        settings=hypothesis_settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # Each sequence ends by erasing its subscribers: not one key may remain.
    assert snapshot() == {}
