"""Several tests of one process at once ("lanes"), reported one by one in their order.

A suite test mostly waits for the server: Dovecot, for one, holds every IDLE notification for 500 ms
(NOTIFY_DELAY_MSECS in its mailbox-watch.c), and a login or a set-up is a few round trips. So, with
`--lanes N`, a process starts the set-up, steps and clean-up of the next N-1 tests in its queue in threads
while pytest takes its tests one at a time on the main thread: SuiteItem.setup(), runtest() and teardown()
then wait for their test's lane and raise what it raised. Under xdist a worker looks only at its own
queue, and lane_scheduling keeps that queue long enough. Reports, -x, xfail, the terminal and results.json see the same
tests in the same order as with one lane; only the waiting overlaps.

What keeps tests apart is what already keeps xdist's workers apart: each test has its own accounts, its
own sessions and its own transcript. Accounts are claimed on the main thread in queue order, and a test
whose accounts are still held by a running lane waits for them (AccountPool.claim). Nothing here runs
without lanes (the default for a server of the user's, `--target`): tests then run inline, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# How far past the test being reported lanes may start tests (in lanes): tests that ended wait there to be
# reported, so that a long test does not idle the other lanes; the queue an xdist worker has is as long.
LOOKAHEAD = 2

# Seconds HarnessState.stop waits for lanes still running (a -x run stops with tests started ahead) before
# it empties the accounts they use: their own deadlines end them sooner.
DRAIN_SECONDS = 60.0


class Lane:
    """One test's set-up, steps and clean-up on a thread; `setup_done` and `done` let the main thread follow."""

    def __init__(self, work: Callable[["Lane"], None], release: Callable[[], None], finished: threading.Event):
        self.setup_done = threading.Event()
        self.done = threading.Event()
        self.setup_error: BaseException | None = None
        self.run_error: BaseException | None = None
        self.teardown_error: BaseException | None = None
        self._work = work
        self._release = release
        self._finished = finished
        self.thread = threading.Thread(target=self._main, daemon=True)  # Ctrl-C must not wait for it

    def _main(self) -> None:
        try:
            self._work(self)
        finally:
            self.setup_done.set()
            self._release()  # the accounts are free again only once nothing of the test can touch them
            self.done.set()
            self._finished.set()  # the main thread may start another lane



class Lanes:
    """The lanes of one process (controller without xdist, or one xdist worker)."""

    def __init__(self, width: int):
        self.width = max(1, width)
        self.running: list[Lane] = []
        self._index: dict[int, int] | None = None
        self._worker = None  # xdist's WorkerInteractor in a worker (False: not found)
        self.finished = threading.Event()  # set by each lane as it ends

    @property
    def enabled(self) -> bool:
        return self.width > 1

    def upcoming(self, item) -> list:
        """The items this process will run after `item`, in order (as far as it knows them yet)."""
        session = item.session
        if hasattr(session.config, "workerinput"):  # an xdist worker: only its own queue (xdist/remote.py)
            if self._worker is None:
                self._worker = self._interactor(session.config) or False
            interactor = self._worker
            if not interactor:
                return []  # not the xdist we know: no test starts ahead, none runs twice
            with interactor.torun.lock() as queued:
                indices = [interactor.nextitem_index, *queued]
            return [session.items[i] for i in indices if isinstance(i, int)]
        if self._index is None:
            self._index = {id(it): n for n, it in enumerate(session.items)}
        n = self._index.get(id(item))
        return [] if n is None else session.items[n + 1:]

    @staticmethod
    def _interactor(config):
        """xdist's WorkerInteractor (registered without a name): it holds the worker's queue of test indices."""
        for plugin in config.pluginmanager.get_plugins():
            if type(plugin).__name__ == "WorkerInteractor" and hasattr(plugin, "torun") and hasattr(plugin, "nextitem_index"):
                return plugin
        return None

    def start_ahead(self, item, start: Callable[[object], bool]) -> None:
        """Start lanes for the tests after `item` until `width` run; stop at the first that cannot start (its
        accounts are busy), so that accounts are always claimed in queue order. Tests that ended wait to be
        reported without holding a lane: a long test does not keep the short ones after it from running."""
        self.running = [lane for lane in self.running if not lane.done.is_set()]
        for nxt in self.upcoming(item)[: LOOKAHEAD * self.width]:
            if len(self.running) >= self.width:
                return
            if getattr(nxt, "lane", "none") is not None:
                continue  # started already, or not one of ours (it runs inline when its turn comes)
            if not start(nxt):
                return

    def wait(self, item, event: threading.Event, start: Callable[[object], bool]) -> None:
        """Wait on the main thread for `item`'s lane to reach `event`, starting the next tests as lanes end.
        In slices: the main thread stays responsive to Ctrl-C, SIGTERM and pytest-timeout's SIGALRM."""
        while not event.is_set():
            self.finished.clear()
            self.start_ahead(item, start)
            if event.is_set():
                return
            self.finished.wait(0.5)

    def add(self, lane: Lane) -> Lane:
        self.running.append(lane)
        lane.thread.start()
        return lane

    def drain(self, seconds: float = DRAIN_SECONDS) -> None:
        """Wait (bounded) for lanes whose tests pytest never reached, e.g. after -x."""
        deadline = time.monotonic() + seconds
        for lane in self.running:
            lane.done.wait(max(0.0, deadline - time.monotonic()))
        self.running = []


def reraise(error: BaseException | None) -> None:
    if error is not None:
        raise error


def lane_scheduling(config, log, width: int):
    """xdist's load scheduling, but each worker keeps LOOKAHEAD * `width` tests queued beyond the one it
    runs, so that its lanes have tests to start. Plain LoadScheduling leaves a worker two while a test takes 0.1 s or
    more (an IDLE test takes 0.5 s): the very tests whose waits lanes exist to fill would run one by one."""
    from xdist.scheduler import LoadScheduling

    class LaneScheduling(LoadScheduling):
        def check_schedule(self, node, duration: float = 0) -> None:
            wanted = LOOKAHEAD * width + 1  # the test it runs, and as many as its lanes may start ahead
            if not node.shutting_down and self.pending and len(self.node2pending[node]) < wanted:
                self._send_tests(node, wanted - len(self.node2pending[node]))
            super().check_schedule(node, duration)

    return LaneScheduling(config, log)
