"""The server batches concurrent requests: 4 clients at once, each with its own seed, all succeed
and get the bytes the same requests get one by one; /health reports active streams and cached
sessions; --max-audio-ms caps one request."""

from __future__ import annotations

import threading
import time

import pytest

from test_server import TIMEOUT, RunningServer

TEXTS = ["Hello from the first client.", "A second client speaks.", "Third one here.",
         "And the fourth client, last."]


def speech(server, i, **extra):
    body = {"model": "csm-1b", "input": TEXTS[i], "voice": "conversational_a", "seed": 40 + i,
            "max_audio_length_ms": 800, "response_format": "pcm", "stream": i % 2 == 1}
    body.update(extra)
    return server.http.post("/v1/audio/speech", json=body)


@pytest.fixture(scope="module")
def server(csm_home):
    running = RunningServer(None, max_batch=8, max_audio_ms=5000)
    yield running
    running.stop()


def test_four_clients_at_once_get_the_bytes_of_one_by_one(server):
    alone = [speech(server, i) for i in range(4)]
    assert all(r.status_code == 200 and r.content for r in alone)
    replies = [None] * 4
    seen = []

    def ask(i):
        replies[i] = speech(server, i)

    def watch():  # until the clients are done, however they end
        while any(t.is_alive() for t in threads):
            seen.append(server.http.get("/health").json()["active_streams"])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    watcher = threading.Thread(target=watch)
    for t in threads:
        t.start()
    watcher.start()
    for t in [*threads, watcher]:
        t.join(300)
    assert [r.status_code for r in replies] == [200] * 4
    for i in range(4):
        assert replies[i].content == alone[i].content, i
    assert max(seen) >= 2  # they ran side by side
    assert server.app.state.csm.backend.model.generator.scheduler.peak_batch >= 2


def test_health_reports_streams_and_sessions(server):
    health = server.wait_idle()
    assert health["active_streams"] == 0 and health["max_batch"] == 8
    assert health["cached_sessions"] >= 1  # the anonymous requests' cache


def test_max_audio_ms_caps_a_request(server):
    reply = speech(server, 0, max_audio_length_ms=60_000)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "max_audio_length_ms" and "5000" in error["message"]


def test_requests_queued_together_share_the_first_tick(server):
    """Three requests queued while the worker is busy all join the batch before its first tick
    (not one per tick), and still get the bytes they get alone."""
    server.wait_idle()
    alone = [speech(server, i).content for i in range(3)]
    generator = server.app.state.csm.backend.model.generator
    sizes = []
    tick = generator.tick

    def counted(requests):
        sizes.append(len([r for r in requests if r.prefilled and not r.done]))
        return tick(requests)

    entered, release = threading.Event(), threading.Event()

    def hold():  # runs on the worker thread and keeps it until released
        entered.set()
        release.wait(TIMEOUT)

    busy = threading.Thread(target=server.worker.call, args=(hold,))
    busy.start()
    generator.tick = counted
    try:
        # The requests go out only once the worker holds the busy call: sent earlier, the worker
        # could take them together with it (it starts up to max_batch queued jobs at once), and
        # they would never be counted as queued.
        assert entered.wait(TIMEOUT), "the worker did not take the busy call"
        replies = [None] * 3
        threads = [threading.Thread(target=lambda i=i: replies.__setitem__(i, speech(server, i))) for i in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + TIMEOUT
        while server.worker.queued() < 3:  # the three requests, behind the busy call
            assert time.monotonic() < deadline, f"queued {server.worker.queued()}, replies {replies}"
            time.sleep(0.01)
        release.set()
        for t in threads:
            t.join(300)
    finally:
        release.set()
        busy.join(60)
        generator.tick = tick
    assert [r.status_code for r in replies] == [200] * 3
    assert [r.content for r in replies] == alone
    assert sizes and sizes[0] == 3, sizes
