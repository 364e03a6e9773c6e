"""One followed log for every reader: what a whole read of the finished log does to it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from airflow_ray_platform.backends import followed_logs
from airflow_ray_platform.backends.followed_logs import FollowedLog


class HeldFollow:
    """A follow that sends ``first`` and then stays open until released, as Ray's log tail stays open
    for seconds after its job's end; what it sends after the release is ``then``."""

    def __init__(self, first: bytes, then: bytes = b"") -> None:
        self.first, self.then = first, then
        self.sent = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> Iterator[bytes]:
        yield self.first
        self.sent.set()
        self.release.wait(30)
        if self.then:
            yield self.then


def test_a_whole_read_completes_the_log_while_its_follow_is_still_open(monkeypatch):
    monkeypatch.setattr(followed_logs, "FINAL_READ_SECONDS", 3600)  # a last read that waited would outlast the hold
    follow = HeldFollow(b"line 1\nline 2\n", then=b"line 3\n")
    log = FollowedLog(follow)
    text, offset = log.since(0, complete_lines=True)  # opens the follow
    assert follow.sent.wait(10)
    more, offset = log.since(offset, complete_lines=True)
    assert text + more == "line 1\nline 2\n"

    assert log.complete_with(bytearray(b"line 1\nline 2\nline 3\n"))
    assert log.complete and not log._ended.is_set()  # the follow is still open: the last read does not wait for it
    rest, end = log.since(offset, complete_lines=False)
    assert (rest, end) == ("line 3\n", len(b"line 1\nline 2\nline 3\n"))
    assert not log._ended.is_set()  # that last read did not wait for the follow to close

    follow.release.set()  # the superseded follow's late bytes are not added a second time
    assert log._ended.wait(10)
    assert log.since(0, complete_lines=False)[0] == "line 1\nline 2\nline 3\n"


def test_a_whole_read_that_does_not_extend_what_was_received_changes_nothing():
    follow = HeldFollow(b"line 1\n")
    log = FollowedLog(follow)
    log.since(0, complete_lines=True)
    assert follow.sent.wait(10)
    log.since(0, complete_lines=True)

    assert not log.complete_with(bytearray(b"other 1\nother 2\n"))
    assert not log.complete
    assert log.since(0, complete_lines=True)[0] == "line 1\n"
    follow.release.set()
    assert log._ended.wait(10)
    assert log.complete and log.since(0, complete_lines=False)[0] == "line 1\n"
