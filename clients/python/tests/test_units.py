"""The SDK's plain logic without a gateway: codec, duplicate rule, resubscribe frames,
backoff, token expiry, error mapping."""

from __future__ import annotations

import base64
import json
import random

import jwt
import pytest

import firetower
from firetower._errors import error_from_close, error_from_frame
from firetower._protocol import Notice, Reply, parse
from firetower._recovery import Cursor, ResubscribeEntry, resubscribe_frames
from firetower._token import expiry, refresh_delay


def msg(offset=None, epoch=None, topic="chat.1"):
    return firetower.Message(topic, {"n": offset}, 1, offset or 0, offset, epoch)


def test_parse_message_with_and_without_history():
    m = parse('{"op":"message","topic":"room.1","data":{"a":1},"term":3,"seq":42}')
    assert m == firetower.Message("room.1", {"a": 1}, 3, 42)
    assert m.position is None
    m = parse('{"op":"message","topic":"chat.1","data":"x","term":3,"seq":7,"offset":41,"epoch":"E"}')
    assert m.position == firetower.Position("E", 41)


def test_parse_binary_payload_as_bytes():
    b64 = base64.b64encode(b"\x00\xff").decode()
    m = parse(json.dumps({"op": "message", "topic": "t", "data": b64, "encoding": "base64",
                          "term": 1, "seq": 1}))
    assert m.data == b"\x00\xff"


def test_parse_replies_notices_and_events():
    r = parse('{"op":"ack","id":5,"recovered":{"chat.1":true}}')
    assert isinstance(r, Reply) and r.id == 5 and r.frame["recovered"] == {"chat.1": True}
    r = parse('{"op":"error","id":2,"code":"forbidden","message":"you may not"}')
    assert isinstance(r, Reply) and isinstance(r.error, firetower.Forbidden)
    n = parse('{"op":"error","code":"banned","message":"banned"}')
    assert isinstance(n, Notice) and isinstance(n.error, firetower.Banned)
    assert parse('{"op":"gap","topic":"room.1","dropped":3}') == firetower.Gap("room.1", 3)
    assert parse('{"op":"join","topic":"r","user":"u1"}') == firetower.Join("r", "u1")
    assert parse('{"op":"leave","topic":"r","user":"u1"}') == firetower.Leave("r", "u1")
    assert parse('{"op":"something_new"}') is None


@pytest.mark.parametrize("text", ["nope", "[1]", '{"op":"message","topic":"t"}', '{"id":1}',
                                  '{"op":"ack"}', '{"op":"gap","topic":"t","dropped":"x"}',
                                  '{"op":"message","topic":"t","data":1,"term":1,"seq":true}'])
def test_parse_refuses_what_is_not_the_protocol(text):
    with pytest.raises(ValueError):
        parse(text)


def test_cursor_drops_duplicates_within_an_epoch_and_follows_a_new_epoch():
    c = Cursor()
    assert c.admit(msg(1, "E")) and c.admit(msg(2, "E"))
    assert not c.admit(msg(2, "E")) and not c.admit(msg(1, "E"))
    assert c.position == ("E", 2)
    assert c.admit(msg(1, "F"))  # history lost: a new epoch starts over
    assert c.position == ("F", 1)
    assert c.admit(msg()) and c.position == ("F", 1)  # no offset: always new, position kept


def test_resubscribe_is_one_frame_with_recover_for_topics_with_a_position():
    frames = resubscribe_frames([
        ResubscribeEntry("chat.1", False, firetower.Position("E", 41)),
        ResubscribeEntry("room.1", False, None),
        ResubscribeEntry("chat.2", False, firetower.Position("F", 3)),
    ])
    assert frames == [{"op": "subscribe", "topics": ["chat.1", "room.1", "chat.2"],
                       "recover": {"chat.1": {"epoch": "E", "offset": 41},
                                   "chat.2": {"epoch": "F", "offset": 3}}}]


def test_resubscribe_splits_by_join_leave_and_by_size():
    frames = resubscribe_frames([ResubscribeEntry("a", False, None),
                                 ResubscribeEntry("b", True, None)])
    assert frames == [{"op": "subscribe", "topics": ["a"]},
                      {"op": "subscribe", "topics": ["b"], "join_leave": True}]
    many = [ResubscribeEntry("t." + "x" * 200 + str(i), False, firetower.Position("E" * 20, i))
            for i in range(1000)]
    frames = resubscribe_frames(many)
    assert len(frames) > 1
    assert [t for f in frames for t in f["topics"]] == [e.topic for e in many]
    for f in frames:
        assert len(json.dumps({**f, "id": 2**53})) < 64 * 1024
        assert set(f["recover"]) == set(f["topics"])


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    b = firetower.Backoff(initial=0.5, max=8.0, rng=random.Random(7))
    assert [b.ceiling(a) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.ceiling(10_000) == 8.0
    delays = [b.delay(3) for _ in range(2000)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert min(delays) < 0.2 and max(delays) > 3.8  # spread over the whole window
    with pytest.raises(ValueError):
        firetower.Backoff(initial=2, max=1)
    with pytest.raises(ValueError):
        firetower.Backoff(initial=0)


def test_token_expiry_is_read_without_verifying():
    secret = "some-secret-that-we-do-not-know-123"
    t = jwt.encode({"sub": "u", "exp": 1_900_000_000}, secret, algorithm="HS256")
    assert expiry(t) == 1_900_000_000
    assert expiry("not a jwt") is None
    assert expiry("a.b.c") is None
    no_exp = jwt.encode({"sub": "u"}, secret, algorithm="HS256")
    assert expiry(no_exp) is None


def test_refresh_happens_before_exp_with_a_bounded_lead():
    assert refresh_delay(1000.0, 1000.0 - 3600) == pytest.approx(3600 - 60)
    assert refresh_delay(1000.0, 1000.0 - 4) == pytest.approx(3.0)
    assert refresh_delay(1000.0, 1001.0) == 0.0


@pytest.mark.parametrize("code,cls", [
    ("unauthorized", firetower.Unauthorized), ("forbidden", firetower.Forbidden),
    ("banned", firetower.Banned), ("rate_limited", firetower.RateLimited),
    ("unavailable", firetower.Unavailable), ("timeout", firetower.Timeout),
    ("invalid_topic", firetower.InvalidTopic), ("too_many_topics", firetower.TooManyTopics),
    ("no_history", firetower.NoHistory), ("presence_disabled", firetower.PresenceDisabled),
    ("not_configured", firetower.NotConfigured), ("internal_error", firetower.InternalError),
    ("frame_too_large", firetower.FrameTooLarge), ("invalid_json", firetower.InvalidRequest),
])
def test_error_codes_map_to_classes(code, cls):
    e = error_from_frame(code, "text")
    assert type(e) is cls and e.code == code and e.message == "text"
    assert isinstance(e, firetower.FiretowerError)


def test_close_codes_map_to_classes():
    assert isinstance(error_from_close(4401, ""), firetower.Unauthorized)
    assert isinstance(error_from_close(4403, ""), firetower.Forbidden)
    assert isinstance(error_from_close(4429, ""), firetower.TooManyConnections)
    assert isinstance(error_from_close(4503, ""), firetower.Unavailable)
    assert type(error_from_close(1001, "")) is firetower.ConnectionClosed
    assert error_from_close(None, "").close_code is None
    # The error frame sent just before the close names the cause better, if it matches it.
    banned = error_from_frame("banned", "you are banned")
    assert error_from_close(4403, "", banned) is banned and banned.close_code == 4403
    assert type(error_from_close(1009, "", error_from_frame("forbidden", "x"))) is firetower.FrameTooLarge


def test_timeout_and_connection_closed_are_builtin_kinds_too():
    assert issubclass(firetower.Timeout, TimeoutError)
    assert issubclass(firetower.ConnectionClosed, ConnectionError)
    assert issubclass(firetower.ClientClosed, firetower.ConnectionClosed)


def test_client_refuses_bad_arguments():
    with pytest.raises(ValueError):
        firetower.Client()
    with pytest.raises(ValueError):
        firetower.Client("http://x/ws")
