"""Keeping a long CPU run's resident memory flat over images of many sizes.

Two things grow with every new image size on CPU: glibc keeps the freed blocks of large tensors in fragmented
heaps instead of returning them to the system, and oneDNN caches the primitives of every shape it has met (1024
by default). :func:`release_freed_memory` returns the freed memory after each image (``malloc_trim``, glibc only;
a no-op elsewhere); :func:`bound_onednn_cache` lowers oneDNN's cache unless the user has set it.
"""
import ctypes
import ctypes.util
import os

ONEDNN_CACHE_CAPACITY = 256  # primitives: plenty for one network's subnets and batch shapes

_libc = None


def bound_onednn_cache(capacity=ONEDNN_CACHE_CAPACITY):
    """Set ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` unless the user has (call before the first convolution)."""
    os.environ.setdefault('ONEDNN_PRIMITIVE_CACHE_CAPACITY', str(capacity))


def release_freed_memory():
    """Give the memory freed by tensors back to the system (glibc's ``malloc_trim``); False where unavailable."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
            _libc.malloc_trim  # noqa: B018  (raises AttributeError outside glibc)
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)
    return True
