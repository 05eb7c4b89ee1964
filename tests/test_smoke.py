"""A first end-to-end round trip, on both backends."""

from tests.conftest import PATH, SUB


def test_put_then_get_round_trip(client, auth):
    body = {
        "favorites": ["a1", "a2"],
        "view_data": [
            {"asset_id": "a2", "pause_time": 310, "last_played_on": 1764000000000}
        ],
    }
    assert client.put(PATH + SUB, json=body, headers=auth).status_code == 200
    got = client.get(PATH + SUB, headers=auth).get_json()
    assert got["favorites"] == body["favorites"]
    assert got["view_data"] == body["view_data"]
