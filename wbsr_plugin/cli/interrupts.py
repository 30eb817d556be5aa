"""Ctrl-C and SIGTERM end a command cleanly: files being written are removed (they are written under a temporary
name, :func:`wbsr_plugin.utils.files.atomic_path`), one line says so, and the exit status is 130."""
import signal
import sys
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


def run_interruptibly(main, argv, name):
    """``main(argv)``; on Ctrl-C or SIGTERM one line on stderr and :data:`INTERRUPTED`."""
    with sigterm_as_interrupt():
        try:
            return main(argv)
        except KeyboardInterrupt:
            print(f'\n{name}: interrupted; unfinished files were removed.', file=sys.stderr)
            return INTERRUPTED
