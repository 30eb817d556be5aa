"""Argument types of the commands: a bad value gets argparse's one-line usage error."""
import argparse
import os
import unicodedata


def positive_int(text):
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
    return value


NAME_PART_MAX = 100  # characters of a name part (file names have 255 bytes at most)


def name_part_problem(text):
    """What makes ``text`` unfit as a part of an output file name (None when it is fit): it must be non-empty and
    short, and hold no path separator, no '..' and no control characters, so that every output stays in its
    folder."""
    if not text:
        return 'expected a part of a file name, got an empty string'
    if len(text) > NAME_PART_MAX:
        return f'expected a part of a file name of at most {NAME_PART_MAX} characters, got {len(text)}'
    if any(sep in text for sep in ('/', '\\', os.sep, os.altsep) if sep):
        return f'expected a part of a file name without a path separator, got {text!r}'
    if '..' in text:
        return f"expected a part of a file name without '..', got {text!r}"
    if any(unicodedata.category(c) in ('Cc', 'Cf', 'Cs', 'Co', 'Cn') for c in text):
        return f'expected a part of a file name without control characters, got {text!r}'
    return None


def name_part(text):
    """A part of an output file name (``--suffix``): see :func:`name_part_problem`."""
    problem = name_part_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text
