"""Where a run writes, decided before any computation, so that no run loses work (the output policy).

* An input ``NAME.EXT`` is written as ``NAME_SUFFIX.OUT`` (and, with ``--save-map``, its map as ``NAME_map.png``).
  ``OUT`` is the ``--ext`` choice, or with ``auto`` the input's own extension, except that 16-bit and RGBA
  inputs are written as PNG unless the input already is PNG or TIFF (the formats that keep them).
* Inputs whose names differ only in their extension or in letter case (``a.png``, ``a.jpg``, ``A.png``) are
  written as ``NAME_EXT_SUFFIX.OUT``; those that still differ only in letter case (``A.png`` and ``a.png``,
  ``a.PNG`` and ``a.png``) get a number after the first in the order of their names (``A_png_out.png``,
  ``a_png_2_out.png``), so two inputs never share an output, also on file systems that ignore case. When even
  that is ambiguous (an input named ``a_png_2.png`` beside them) the run stops before computing anything.
* The suffix is a part of a file name (no separator, no '..', no control characters): every output lies in the
  output folder.
* No output may be an input, and no map may be an image of the same run: such runs stop before computing.
* When ``-o`` is ``-i`` or lies inside it, files that look like this command's outputs (``*_SUFFIX.*``,
  ``*_map.png``) are not taken as inputs; the run says how many it left out.
* A file the run would write that already exists is never replaced silently: the run stops before computing and
  lists them, unless ``--overwrite`` (replace them) or ``--skip-existing`` (leave out the inputs whose outputs
  all exist; of the others, only the missing files are written). A folder (or anything but a file) where an output
  would go stops the run before computing, whatever the flags.

Whether an output exists is decided from its name alone, without decoding the input: with ``auto`` either
extension an input may get counts. Outputs are renamed into place only when complete, so an existing name is a
finished image.
"""
import os
from collections import defaultdict
from os import path as osp

from .arg_types import name_part, name_part_problem

OUTPUT_EXTENSIONS = ('auto', 'png', 'jpg', 'tif', 'webp')
# Formats that keep 16 bits per channel and an alpha channel.
DEEP_EXTENSIONS = ('png', 'tif', 'tiff')
MAP_SUFFIX = 'map'
LISTED = 5  # paths named in a conflict message


class OutputConflict(ValueError):
    """A run that would lose work (see the module docstring)."""


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
    if ext in OUTPUT_EXTENSIONS:
        return ext
    raise ValueError(f'unknown extension {ext!r}; expected one of {OUTPUT_EXTENSIONS}.')


def _key(path):
    """A path as the file system may see it: absolute, and case-insensitive."""
    return osp.normcase(osp.realpath(path)).casefold()


def _groups(paths, name):
    """``paths`` grouped by ``name(path)`` without regard to letter case (lists in the order of ``paths``)."""
    groups = defaultdict(list)
    for path in paths:
        groups[name(path).casefold()].append(path)
    return list(groups.values())


def _listed(paths):
    paths = sorted(paths)
    more = f' and {len(paths) - LISTED} more' if len(paths) > LISTED else ''
    return ', '.join(paths[:LISTED]) + more


class OutputNames:
    """The output paths of one run's inputs (see the module docstring).

    Args:
        folder (str): Output folder.
        inputs (Sequence[str]): Every input of the run (all ranks'), in order.
        suffix (str): Output name suffix.
        ext (str): One of :data:`OUTPUT_EXTENSIONS`.
        save_map (bool): Whether each input also gets a map.

    Raises:
        OutputConflict: Two inputs would share an output, or ``suffix`` is not a part of a file name.
    """

    def __init__(self, folder, inputs, suffix, ext, save_map):
        if ext not in OUTPUT_EXTENSIONS:
            raise ValueError(f'unknown extension {ext!r}; expected one of {OUTPUT_EXTENSIONS}.')
        problem = name_part_problem(suffix)
        if problem is not None:
            raise OutputConflict(f'--suffix: {problem}')
        self.folder, self.suffix, self.ext, self.save_map = folder, suffix, ext, save_map
        self.stems = {}
        for paths in _groups(inputs, lambda p: osp.splitext(osp.basename(p))[0]):
            for path in paths:
                stem, extension = osp.splitext(osp.basename(path))
                self.stems[path] = stem if len(paths) == 1 else f'{stem}_{extension.lstrip(".").lower()}'
        for paths in _groups(inputs, self.stems.get):  # still the same but for letter case: numbered
            for number, path in enumerate(sorted(paths, key=osp.basename)[1:], start=2):
                self.stems[path] = f'{self.stems[path]}_{number}'
        self.check_unique(inputs)

    def image_path(self, input_path, ext):
        """``folder/STEM_SUFFIX.EXT`` of ``input_path`` (an extension without the dot)."""
        return osp.join(self.folder, f'{self.stems[input_path]}_{self.suffix}.{ext}')

    def image_candidates(self, input_path):
        """Every path the input's image may get, known without decoding it."""
        if self.ext != 'auto':
            return [self.image_path(input_path, self.ext)]
        own = _input_extension(input_path)
        return [self.image_path(input_path, e) for e in ([own] if own in DEEP_EXTENSIONS else [own, 'png'])]

    def map_path(self, input_path):
        """``folder/STEM_map.png``, or None without ``save_map``."""
        return osp.join(self.folder, f'{self.stems[input_path]}_{MAP_SUFFIX}.png') if self.save_map else None

    def paths(self, input_path):
        """Every path the input may write."""
        return self.image_candidates(input_path) + ([self.map_path(input_path)] if self.save_map else [])

    def finished(self, input_path):
        """True when the input's image (and map, with ``save_map``) exists."""
        return any(osp.isfile(p) for p in self.image_candidates(input_path)) and (
            not self.save_map or osp.isfile(self.map_path(input_path)))

    def check_unique(self, inputs):
        """No two inputs (or an input's image and map) share a path; no path is an input."""
        owners = {}
        for path in inputs:
            for kind, target in [('output', p) for p in self.image_candidates(path)] + (
                    [('map', self.map_path(path))] if self.save_map else []):
                other = owners.setdefault(_key(target), (path, kind, target))
                if other[0] != path or other[1] != kind:
                    raise OutputConflict(
                        f'the {other[1]} of {other[0]} and the {kind} of {path} would both be written as {target}'
                        + ('; choose another --suffix than map' if MAP_SUFFIX in (other[1], kind) else
                           '; rename one of the inputs'))
        for path in inputs:
            if _key(path) in owners:
                owner, kind, _ = owners[_key(path)]
                raise OutputConflict(f'the {kind} of {owner} would overwrite the input {path}; choose another '
                                     '-o or --suffix')

    def check_existing(self, inputs, overwrite, skip_existing):
        """Stop when something that is not a file takes the name of an output (a folder: whatever the flags), or
        when a file the run would write exists, unless ``overwrite`` or ``skip_existing``.

        Returns:
            list[str]: The files of the run that exist now (``skip_existing`` keeps them).
        """
        planned = [p for path in inputs for p in self.paths(path)]
        blocked = [p for p in planned if osp.lexists(p) and not osp.isfile(p)]
        if blocked:
            what = 'a folder' if osp.isdir(blocked[0]) else 'not a regular file'
            raise OutputConflict(f'-o: {blocked[0]} is {what}, where an output of this run would be written'
                                 + (f' ({len(blocked)} such paths)' if len(blocked) > 1 else '')
                                 + '; rename or remove it, or choose another -o or --suffix')
        existing = [p for p in planned if osp.isfile(p)]
        if overwrite or skip_existing:
            return existing
        if existing:
            raise OutputConflict(f'{len(existing)} file(s) this run would write exist already: {_listed(existing)}; '
                                 'pass --skip-existing to keep them or --overwrite to replace them')
        return existing


def looks_like_output(path, suffix):
    """True for ``*_SUFFIX.*`` and ``*_map.png``: what this command writes."""
    stem, extension = osp.splitext(osp.basename(path))
    stem = stem.casefold()
    return stem.endswith(f'_{suffix}'.casefold()) or (stem.endswith(f'_{MAP_SUFFIX}') and extension.lower() == '.png')


def outputs_among_inputs(inputs, input_path, output_folder, suffix):
    """``(inputs, left_out)``: when ``output_folder`` is ``input_path`` or lies inside it, the files that look
    like outputs (:func:`looks_like_output`) are left out of the inputs."""
    if not osp.isdir(input_path):
        return list(inputs), []
    root, out = _key(input_path), _key(output_folder)
    if not (out == root or out.startswith(root.rstrip(os.sep) + os.sep)):
        return list(inputs), []
    left_out = [p for p in inputs if looks_like_output(p, suffix)]
    return [p for p in inputs if p not in left_out], left_out


def add_output_arguments(parser):
    """The output policy's arguments (``--save-map``, ``--suffix``, ``--ext``, ``--skip-existing``,
    ``--overwrite``) as the group ``output`` of ``parser``, which it returns."""
    output = parser.add_argument_group('output')
    output.add_argument('--save-map', action='store_true', help='also write NAME_map.png: subnet per patch')
    output.add_argument('--suffix', default='out', type=name_part, help='output name suffix: NAME_SUFFIX.EXT (no '
                        "path separator, '..' or control characters). Default: out")
    output.add_argument('--ext', choices=OUTPUT_EXTENSIONS, default='auto',
                        help='output format; auto keeps the input format (png for 16-bit/alpha). Default: auto')
    existing = output.add_mutually_exclusive_group()
    existing.add_argument('--skip-existing', action='store_true',
                          help='leave out inputs whose output (and map, with --save-map) already exists; of the '
                          'others, write only the missing files')
    existing.add_argument('--overwrite', action='store_true',
                          help='replace files this run writes that exist already (without it, or --skip-existing, '
                          'the run stops before computing when one exists)')
    return output
