"""Reading and writing images in background threads while the network computes.

:class:`ReadAhead` decodes the next images in one thread while the current one runs; :class:`WriteBehind`
encodes and writes finished images in another and hands their outcomes back in input order, so that the
status lines keep that order. Both hold a bounded number of images, so memory stays flat over any folder.

Closing either (it is a context manager) cancels the work still queued and waits for the one item in
progress: a write in progress ends with its file complete or its temporary file removed (atomic writers),
and no thread outlives the run.
"""
import os
import sys
from collections import deque
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from threading import Event, get_native_id

BACKGROUND_NICENESS = 10  # added to the process's: the threads yield the cores to the network's, which set the pace
MAX_NICENESS = 19


def _lower_priority():
    """Give the calling thread a lower priority than the rest of the process (on Linux, where niceness is per
    thread; elsewhere it would be the process's)."""
    if not sys.platform.startswith('linux'):
        return
    thread = get_native_id()
    try:
        niceness = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICENESS, niceness + BACKGROUND_NICENESS))
    except OSError:  # not allowed: the usual priority
        pass


class _BackgroundThread:
    """One lower-priority worker thread; closing it (it is a context manager) cancels the work not started and
    waits for the item in progress."""

    def __init__(self, name):
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=_lower_priority)

    def close(self):
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class ReadAhead(_BackgroundThread):
    """Iterate over ``(path, future)`` in the order of ``paths``: each future the result of ``read(path)``,
    started up to ``ahead`` images early in one background thread.

    Args:
        read (callable): Reads one path (its errors are raised by ``future.result()``).
        paths (list[str]): Files in the order they are wanted.
        ahead (int): Reads started before their image is wanted. Default: 2.
    """

    def __init__(self, read, paths, ahead=2):
        if ahead < 1:
            raise ValueError(f'ahead must be at least 1, got {ahead}')
        super().__init__('wbsr-read')
        self._read = read
        self._paths = list(paths)
        self._ahead = ahead

    def __len__(self):
        return len(self._paths)

    def __iter__(self):
        started = deque()
        for path in self._paths:
            started.append((path, self._executor.submit(self._read, path)))
            if len(started) > self._ahead:
                yield started.popleft()
        while started:
            yield started.popleft()


def _wait(future):
    """Wait until ``future`` is done (``concurrent.futures.wait`` would never return for a future cancelled by
    ``shutdown(cancel_futures=True)``)."""
    try:
        future.exception()
    except CancelledError:
        pass


def _failed(error):
    future = Future()
    future.set_exception(error)
    return future


class WriteBehind(_BackgroundThread):
    """Run jobs one after another in a background thread and hand back their outcomes in the order given.

    Outcomes known at once (an image that failed before its job) take their place in the same order
    (:meth:`add_failed`). At most ``depth`` jobs wait or run; :meth:`submit` blocks until one ends.

    Args:
        depth (int): Jobs waiting or running at most. Default: 2.
        halts (callable | None): ``halts(error)`` True for a job's error that ends the run: the jobs
            after it are cancelled instead of run. Default: None (none halts).
    """

    def __init__(self, depth=2, halts=None):
        if depth < 1:
            raise ValueError(f'depth must be at least 1, got {depth}')
        self._depth = depth
        self._halts = halts or (lambda error: False)
        self._halted = Event()
        self._outcomes = deque()  # (key, future) in the order given
        super().__init__('wbsr-write')

    def _run(self, job, args):
        if self._halted.is_set():
            raise CancelledError('an earlier job ended the run')
        try:
            return job(*args)
        except BaseException as error:
            if self._halts(error):
                self._halted.set()
            raise

    def _running(self):
        return [future for _, future in self._outcomes if not future.done()]

    def submit(self, key, job, *args):
        """Queue ``job(*args)``; its outcome comes back under ``key`` after those given before it."""
        running = self._running()
        while len(running) >= self._depth:
            _wait(running[0])  # the oldest: jobs run in order
            running = self._running()
        self._outcomes.append((key, self._executor.submit(self._run, job, args)))

    def add_failed(self, key, error):
        """Give the outcome of an item that failed before it had a job: ``error``, in its place in the order."""
        self._outcomes.append((key, _failed(error)))

    def finished(self, wait_all=False):
        """Yield ``(key, future)`` of the outcomes at the head of the order that are done, oldest first (with
        ``wait_all``, every outcome, waiting for each)."""
        while self._outcomes and (wait_all or self._outcomes[0][1].done()):
            key, future = self._outcomes.popleft()
            _wait(future)
            yield key, future


def succeeded(future):
    """True for a future that ended with a result (not cancelled, no error)."""
    return future.done() and not future.cancelled() and future.exception() is None
