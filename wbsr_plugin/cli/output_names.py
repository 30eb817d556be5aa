"""Output names of super-resolved images, and whether an input's output already exists.

An input ``NAME.EXT`` is written as ``NAME_SUFFIX.OUT``. ``OUT`` is the ``--ext`` choice, or with
``auto`` the input's own extension, except that 16-bit and RGBA inputs are written as PNG unless the
input already is PNG or TIFF (the formats that keep them). Whether an output exists is decided from
the name alone, without decoding the input: with a fixed extension the exact name must exist; with
``auto`` either ``NAME_SUFFIX.EXT`` or, for inputs that are not PNG/TIFF, ``NAME_SUFFIX.png``
(unless another input has the same ``NAME``: then only ``NAME_SUFFIX.EXT``, since the PNG may be
the other input's). Outputs are renamed into place only when complete, so an existing name is a
finished image.
"""
from collections import Counter
from os import path as osp

OUTPUT_EXTENSIONS = ('auto', 'png', 'jpg', 'tif', 'webp')
# Formats that keep 16 bits per channel and an alpha channel.
DEEP_EXTENSIONS = ('png', 'tif', 'tiff')


def _input_extension(input_path):
    return osp.splitext(input_path)[1].lower().lstrip('.') or 'png'


def output_extension(input_path, ext, info):
    """The extension an output is written with.

    Args:
        input_path (str): Input image path.
        ext (str): One of :data:`OUTPUT_EXTENSIONS`.
        info (ImageInfo): How the input was stored (mode and bit depth).

    Returns:
        str: Extension without the dot.
    """
    if ext == 'auto':
        ext = _input_extension(input_path)
        if info.mode == 'rgba' or info.max_value > 255:
            ext = ext if ext in DEEP_EXTENSIONS else 'png'
        return ext
    elif ext in OUTPUT_EXTENSIONS:
        return ext
    else:
        raise ValueError(f'unknown extension {ext!r}; expected one of {OUTPUT_EXTENSIONS}.')


def output_path(folder, input_path, suffix, ext):
    """``folder/NAME_SUFFIX.EXT`` for an input ``NAME.*`` and an extension without the dot."""
    name = osp.splitext(osp.basename(input_path))[0]
    return osp.join(folder, f'{name}_{suffix}.{ext}')


def possible_output_paths(folder, input_path, suffix, ext, own_extension_only=False):
    """Every path :func:`output_extension` can give ``input_path``, known without decoding it.

    Args:
        folder (str): Output folder.
        input_path (str): Input image path.
        suffix (str): Output name suffix.
        ext (str): One of :data:`OUTPUT_EXTENSIONS`.
        own_extension_only (bool): With 'auto', leave out the PNG a 16-bit or RGBA input would
            give (for inputs whose name another input shares). Default: False.

    Returns:
        list[str]: One path for a fixed extension or a PNG/TIFF input, else two (own extension, PNG).
    """
    if ext == 'auto':
        own = _input_extension(input_path)
        extensions = [own] if own in DEEP_EXTENSIONS or own_extension_only else [own, 'png']
    elif ext in OUTPUT_EXTENSIONS:
        extensions = [ext]
    else:
        raise ValueError(f'unknown extension {ext!r}; expected one of {OUTPUT_EXTENSIONS}.')
    return [output_path(folder, input_path, suffix, e) for e in extensions]


def output_exists(folder, input_path, suffix, ext, own_extension_only=False):
    """True if a finished output of ``input_path`` is in ``folder`` (see :func:`possible_output_paths`)."""
    return any(osp.isfile(p) for p in possible_output_paths(folder, input_path, suffix, ext, own_extension_only))


def shared_names(paths):
    """Names (file name without extension) that more than one of ``paths`` has."""
    counts = Counter(osp.splitext(osp.basename(p))[0] for p in paths)
    return {name for name, count in counts.items() if count > 1}
