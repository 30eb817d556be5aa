"""Ctrl-C and SIGTERM end a command cleanly: files being written are removed (they are written under a temporary
name, :func:`wbsr_plugin.utils.files.atomic_path`), one line says so, and the exit status is 130.

A step that must not be cut in half (publishing an image's files and counting it) runs under
:func:`interrupts_deferred`: the signal takes effect when the step ends, or at once if it comes twice."""
import signal
import sys
import threading
from contextlib import contextmanager

INTERRUPTED = 130  # exit status after Ctrl-C or SIGTERM


@contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does (main thread only)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_deferred():
    """Within the block, a first Ctrl-C or SIGTERM waits until the block ends and then acts as it would have (a
    second one acts at once). Outside the main thread, where signals are not handled, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []

    def defer(signum, frame):
        if caught:  # asked twice: stop now
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
        caught.append(signum)

    previous = {signum: signal.signal(signum, defer) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        signal.raise_signal(caught[0])


def run_interruptibly(main, argv, name):
    """``main(argv)``; on Ctrl-C or SIGTERM one line on stderr and :data:`INTERRUPTED`."""
    with sigterm_as_interrupt():
        try:
            return main(argv)
        except KeyboardInterrupt:
            print(f'\n{name}: interrupted; unfinished files were removed.', file=sys.stderr)
            return INTERRUPTED
