"""Super-resolving a list of images into their files, as ``infer`` does: one step after another, or with the next
images read and the finished ones written in background threads while the network runs
(:mod:`wbsr_plugin.cli.image_pipeline`).

Status lines come in the order of the inputs; an unreadable input, a failed write, an output that is not finite or
out-of-memory skips its image with a warning; a full disk raises :class:`DiskFull`.

Without ``--overwrite`` every file is published only where its name is still free (an exclusive create, never a
check followed by a rename): a file that another process wrote meanwhile is kept, and its image is not counted as
written (:func:`image_done`).
"""
import errno
import sys
from dataclasses import dataclass, replace
from os import path as osp

import torch
from tqdm import tqdm

from wbsr_plugin.utils.memory import release_freed_memory
from wbsr_runtime.images import ImageInfo, ImageReadError, NonFiniteOutput, write_image_atomic
from wbsr_runtime.interrupts import interrupts_deferred
from wbsr_runtime.output_names import output_extension
from wbsr_runtime.subnet_maps import subnet_map_legend, subnet_map_overlay

from .image_io import HostImage, check_finite, read_image
from .image_pipeline import ReadAhead, WriteBehind, succeeded
from .sharding import available_cpus

READ_AHEAD = 2  # images decoded while the network runs another
WRITE_BEHIND = 2  # finished images waiting to be written at most (memory stays bounded)
IMAGE_ERRORS = (OSError, ImageReadError, NonFiniteOutput, RuntimeError, MemoryError)  # may skip one image


@dataclass(frozen=True)
class WriterSettings:
    """How a folder's outputs are written.

    Attributes:
        output (str): The output folder (named in messages).
        ext (str): Output format, or 'auto' (:func:`~.output_names.output_extension`).
        save_map (bool): Also write the subnet map of every image.
        overwrite (bool): Replace files that exist.
        pipeline (str): 'auto', 'overlapped' or 'serial' (:func:`overlaps_io`).
        skip_existing (bool): ``--skip-existing``: a file that appears meanwhile is kept with a note, not an error.
        existing (frozenset[str]): Files of the run that existed when it started (``--skip-existing`` keeps them).
    """
    output: str
    ext: str = 'auto'
    save_map: bool = False
    overwrite: bool = False
    pipeline: str = 'auto'
    skip_existing: bool = False
    existing: frozenset = frozenset()


class DiskFull(OSError):
    """The output device is full: the run stops."""


def is_out_of_memory(err):
    """True for CUDA's and the CPU allocator's out-of-memory errors."""
    text = str(err)
    return isinstance(err, MemoryError) or 'out of memory' in text or "can't allocate memory" in text


def is_image_failure(err):
    """True for an error that fails its image only (the run goes on): an unreadable input, a failed write (but
    a full disk, which would fail every later image), out of memory."""
    if isinstance(err, OSError):
        return err.errno != errno.ENOSPC
    if isinstance(err, (ImageReadError, NonFiniteOutput)):
        return True
    return isinstance(err, (RuntimeError, MemoryError)) and is_out_of_memory(err)


def status_line(text, file=None):
    """Write one status line in one call and flush it, so that the lines of processes sharing a pipe
    (torchrun ranks) never cut into each other."""
    file = sys.stdout if file is None else file
    tqdm.write(text + '\n', file=file, end='')
    file.flush()


def image_done(path, outcome, settings, totals, prefix):
    """Count an image that ran and print its line: ``outcome`` is ``(report, taken)``, ``taken`` the files that
    another process wrote while this one computed them (kept; the image is then not counted as written)."""
    report, taken = outcome
    release_freed_memory()  # the image's tensors are gone: resident memory stays flat over many sizes
    if not taken:
        totals.add(report)
        status_line(f'{prefix}{osp.basename(path)}: {report.summary()}')
        return
    names = ', '.join(taken)
    if settings.skip_existing:
        totals.kept.append(path)
        status_line(f'{prefix}note: kept {names}, which another run wrote while this one computed it '
                    '(--skip-existing)', file=sys.stderr)
        return
    totals.taken.append(path)
    status_line(f'{prefix}warning: {names} appeared while this run computed it (another run writing into -o?); '
                'kept it, and this run\'s output of it is not written', file=sys.stderr)


def image_failed(path, err, settings, totals, prefix):
    """Count a failed image and warn; raise instead when ``err`` ends the run (a full disk, an unexpected error)."""
    if not is_image_failure(err):
        if isinstance(err, OSError):
            raise DiskFull(f'-o: no space left on the device of {settings.output} (writing {osp.basename(path)})') \
                from None
        raise err
    if isinstance(err, OSError):
        where = f'cannot write {err.filename}: ' if err.filename and err.filename != path else ''
        warning = f'{path}: {where}{err.strerror or err}'
    elif isinstance(err, (ImageReadError, NonFiniteOutput)):  # its message starts with the path
        warning = str(err)
    else:
        warning = f'{path}: out of memory; try --budget, a smaller --tile or fewer --threads.'
    status_line(f'{prefix}warning: skipped {warning}', file=sys.stderr)
    totals.failed.append(path)


def outputs_to_write(path, info, names, settings):
    """``(image path or None, map path or None)``: the files of ``path`` this run writes (all of them with
    ``--overwrite``; under ``--skip-existing``, those that did not exist when the run started)."""
    target = names.image_path(path, output_extension(path, settings.ext, info))
    map_target = names.map_path(path) if settings.save_map else None
    return tuple(p if p is not None and (settings.overwrite or p not in settings.existing) else None
                 for p in (target, map_target))


def publish(target, image, settings, taken):
    """Write ``image`` as ``target``; without ``--overwrite`` only where the name is still free (else ``target``
    joins ``taken``)."""
    try:
        write_image_atomic(target, image, replace=settings.overwrite)
    except FileExistsError:
        taken.append(target)


def progress(items, total, prefix):
    return tqdm(items, total=total, unit='img', disable=total < 2 or bool(prefix))


@dataclass
class ComputedImage:
    """An image the network has run, on its way to its files.

    Attributes:
        info (ImageInfo): How the input was stored.
        host (HostImage): The SR image, copied to the host once.
        report (InferenceReport): The engine's report.
        map_plan (InferencePlan | None): With ``--save-map``, the report's plan with its subnets on the host.
        legend (MapLegend | None): With ``--save-map``, the subnet map's legend.
    """
    info: ImageInfo
    host: HostImage
    report: object
    map_plan: object = None
    legend: object = None


def compute_image(decoded, engine, net, settings):
    """Run the network on a decoded image ``(lq, info)`` and start copying its output to the host."""
    lq, info = decoded
    sr, report = engine.run(lq)
    image = ComputedImage(info, HostImage(sr, info, with_map=settings.save_map), report)
    if settings.save_map:
        image.map_plan = replace(report.plan, subnets=report.plan.subnets.cpu())
        image.legend = subnet_map_legend(report, engine.subnets.flops)
    return image


def write_outputs(path, image, names, settings, scale, num_subnets):
    """Write a :class:`ComputedImage` (its image and, with ``--save-map``, its map); returns ``(report, taken)``
    (see :func:`image_done`)."""
    check_finite(path, image.host.finite)
    target, map_target = outputs_to_write(path, image.info, names, settings)
    taken = []
    if target:
        publish(target, image.host.image(), settings, taken)
    if map_target:
        overlay = subnet_map_overlay(image.host.map_base(), image.map_plan, scale, num_subnets, legend=image.legend)
        publish(map_target, overlay, settings, taken)
    return image.report, taken


def super_resolve_serially(paths, engine, net, names, settings, totals, prefix=''):
    """:func:`super_resolve` one step after another (``--pipeline serial``). An interrupt during an image's
    writing takes effect once its files are published and counted (:func:`interrupts_deferred`)."""
    for path in progress(paths, len(paths), prefix):
        try:
            image = compute_image(read_image(path), engine, net, settings)
        except IMAGE_ERRORS as err:
            image_failed(path, err, settings, totals, prefix)
            continue
        with interrupts_deferred():
            try:
                outcome = write_outputs(path, image, names, settings, engine.scale, len(net.subnets))
            except IMAGE_ERRORS as err:
                image_failed(path, err, settings, totals, prefix)
            else:
                image_done(path, outcome, settings, totals, prefix)
            del image


def record_outcomes(writes, settings, totals, prefix, wait_all=False):
    """Count and print the finished images of ``writes`` (a :class:`WriteBehind`) in order; raise when one ends
    the run. An interrupt never falls between taking an image's outcome and counting it."""
    outcomes = writes.finished(wait_all)
    while True:
        with interrupts_deferred():
            path, future = next(outcomes, (None, None))
            if future is None:
                return
            try:
                outcome = future.result()
            except Exception as err:
                image_failed(path, err, settings, totals, prefix)
                continue
            image_done(path, outcome, settings, totals, prefix)


def super_resolve_overlapped(paths, engine, net, names, settings, totals, prefix=''):
    """:func:`super_resolve` with the next images read and the finished ones written in background threads."""
    with ReadAhead(read_image, paths, READ_AHEAD) as reads, \
            WriteBehind(WRITE_BEHIND, halts=lambda err: not is_image_failure(err)) as writes:
        try:
            for path, decoding in progress(reads, len(paths), prefix):
                try:
                    image = compute_image(decoding.result(), engine, net, settings)
                except Exception as err:
                    if not is_image_failure(err):
                        writes.add_failed(path, err)
                        break  # the images before it are still written, as one step after another would
                    writes.add_failed(path, err.with_traceback(None))  # its frames would hold the image's tensors
                else:
                    writes.submit(path, write_outputs, path, image, names, settings, engine.scale, len(net.subnets))
                    del image  # the write job holds it until written
                record_outcomes(writes, settings, totals, prefix)
            record_outcomes(writes, settings, totals, prefix, wait_all=True)
        except KeyboardInterrupt:
            writes.close()  # the write in progress ends: its file is complete or removed
            for path, future in writes.finished():
                if succeeded(future):
                    image_done(path, future.result(), settings, totals, prefix)
            raise


def super_resolve(paths, engine, net, names, settings, totals, prefix=''):
    """Run and write every image of ``paths`` (at their :class:`OutputNames`), counting into ``totals`` (a
    :class:`RankTotals`). Status lines come in the order of ``paths``; a failed image is skipped with a warning;
    a full disk raises :class:`DiskFull`."""
    run_all = super_resolve_overlapped if overlaps_io(settings, net) else super_resolve_serially
    run_all(paths, engine, net, names, settings, totals, prefix)


def overlaps_io(settings, net):
    """``--pipeline``'s choice; with 'auto', overlapped on a GPU or when torch's threads leave a CPU core free."""
    if settings.pipeline != 'auto':
        return settings.pipeline == 'overlapped'
    return next(net.parameters()).device.type != 'cpu' or torch.get_num_threads() < available_cpus()
