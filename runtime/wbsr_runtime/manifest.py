"""The folder ``wbsr-export --dynamic`` writes, and what :class:`Manifest` reads from it.

::

    NAME.wbsr/
        manifest.json        # format, architecture, scale, subnets, the checkpoint's 'wbsr' entry, planning defaults
        subnets/w36d4.onnx   # every subnet, cheapest first (input 'lq', output 'sr', dynamic batch and size)
        ...

``manifest.json`` holds, per subnet, its name, width, depth, file and FLOPs as ``flops_per_pixel * h * w +
flops_constant`` on an h x w LR input (exact: every convolution runs at a fixed multiple of the LR size, or on one
pixel for channel attention), and the reference GFLOPs of a 32 x 32 LR patch (Eq. 16's costs). The ``wbsr`` entry
is the checkpoint's: thresholds (per patch side), class errors with their counts, the patch size they were
made for. ``planning`` holds the tiling defaults and the batch size; ``cost_tables`` the torch engine's measured
costs of the machine the export was made on (those it had measured), which planning by time needs.
"""
import json
import math
from dataclasses import dataclass
from os import path as osp

FORMAT = 'wbsr-dynamic'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'


class ManifestError(ValueError):
    """A folder that is not a usable dynamic export; the message names the file and what is wrong."""


@dataclass(frozen=True)
class SubnetEntry:
    """One subnet of an export.

    Attributes:
        index (int): Position in the cost order, 0 is the cheapest.
        name (str): 'w{width}d{depth}'.
        width, depth (int): The subnet's width and depth.
        file (str): Its ONNX file, relative to the export folder.
        flops_per_pixel, flops_constant (int): FLOPs on an h x w LR input: ``flops_per_pixel * h * w +
            flops_constant``.
        flops (int): FLOPs on the reference 32 x 32 LR patch.
    """
    index: int
    name: str
    width: int
    depth: int
    file: str
    flops_per_pixel: int
    flops_constant: int
    flops: int


@dataclass(frozen=True)
class Manifest:
    """What an export holds (see the module's description).

    Attributes:
        folder (str): The export folder.
        arch (str): The supernet's architecture (``WBSRResNet``, ...).
        scale (int): Upscale factor.
        in_channels (int): Input channels (3).
        subnets (tuple[SubnetEntry]): In cost order.
        wbsr (dict): The checkpoint's ``'wbsr'`` entry (thresholds, class errors, patch size), or {}.
        planning (dict): ``overlap``, ``trim``, ``max_batch_pixels``.
        package (str): What wrote it.
        cost_tables (tuple[dict]): Measured costs (:class:`~.cost_table.CostTable` as dicts) of the machine the
            export was made on, per runtime, precision and thread count; may be empty.
    """
    folder: str
    arch: str
    scale: int
    in_channels: int
    subnets: tuple
    wbsr: dict
    planning: dict
    package: str = ''
    cost_tables: tuple = ()

    @classmethod
    def read(cls, folder):
        """Read and check ``folder/manifest.json`` and that every subnet file is there."""
        path = osp.join(folder, MANIFEST)
        if not osp.isdir(folder):
            raise ManifestError(f'--model: {folder} is not a folder (a dynamic export from wbsr-export --dynamic)')
        try:
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ManifestError(f'--model: {folder} has no {MANIFEST} (export it with wbsr-export --dynamic)') from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ManifestError(f'--model: cannot read {path}: {err}') from None
        if not isinstance(data, dict) or data.get('format') != FORMAT:
            raise ManifestError(f'--model: {path} is not a {FORMAT} manifest')
        if data.get('format_version') != FORMAT_VERSION:
            raise ManifestError(f"--model: {path} has format version {data.get('format_version')!r}; this runtime "
                                f'reads version {FORMAT_VERSION}')
        try:
            subnets = tuple(SubnetEntry(index=i, **entry) for i, entry in enumerate(data['subnets']))
            manifest = cls(folder, str(data['arch']), int(data['scale']), int(data['in_channels']), subnets,
                           dict(data.get('wbsr') or {}), dict(data['planning']), str(data.get('package', '')),
                           tuple(dict(table) for table in data.get('cost_tables') or ()))
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f'--model: {path} is incomplete or malformed ({type(err).__name__}: {err})') from None
        if not subnets or manifest.scale < 1:
            raise ManifestError(f'--model: {path} lists no subnets or a scale below 1')
        for entry in subnets:
            file = osp.normpath(osp.join(folder, entry.file))
            if osp.isabs(entry.file) or not file.startswith(osp.normpath(folder) + osp.sep):
                raise ManifestError(f'--model: {path}: subnet file {entry.file!r} lies outside the export folder')
            if not osp.isfile(file):
                raise ManifestError(f'--model: {path} lists {entry.file}, which is missing')
        return manifest

    def flops(self, h, w, subnet):
        """FLOPs of ``subnet`` on an h x w LR input."""
        entry = self.subnets[subnet]
        return entry.flops_per_pixel * h * w + entry.flops_constant

    def cost_table(self, runtime, device):
        """The :class:`~.cost_table.CostTable` measured for ``runtime`` ('openvino bf16', ...) on ``device``
        (:func:`~.cost_table.this_cpu`), or None."""
        from .cost_table import CostTable
        for data in self.cost_tables:
            key = data.get('key') or {}
            if key.get('runtime') == runtime and key.get('device') == device:
                try:
                    table = CostTable.from_json(json.dumps(data))
                except (TypeError, ValueError) as err:
                    raise ManifestError(f'--model: a cost table of {MANIFEST} is malformed ({err})') from None
                if table.num_subnets == len(self.subnets):
                    return table
        return None

    def subnet_path(self, subnet):
        return osp.join(self.folder, self.subnets[subnet].file)


def flops_terms(flops):
    """``(per pixel, constant)`` of a FLOPs function ``flops(h, w)`` that is linear in h * w; raises ValueError
    when it is not (checked at three sizes)."""
    one, two = flops(1, 1), flops(2, 1)
    per_pixel, constant = two - one, 2 * one - two
    for h, w in ((7, 5), (64, 64), (129, 33)):
        if flops(h, w) != per_pixel * h * w + constant:
            raise ValueError('FLOPs are not linear in the LR pixel count; the export cannot describe them.')
    return per_pixel, constant


def manifest_entry(name, width, depth, file, flops):
    """The manifest record of one subnet (``flops(h, w)``: its FLOPs on an h x w LR input)."""
    per_pixel, constant = flops_terms(flops)
    return {'name': name, 'width': int(width), 'depth': int(depth), 'file': file, 'flops_per_pixel': per_pixel,
            'flops_constant': constant, 'flops': flops(32, 32)}


def check_finite_json(value):
    """``value`` unchanged; ValueError when it holds a number that JSON cannot (NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f'{value} cannot be written to JSON')
    if isinstance(value, dict):
        for item in value.values():
            check_finite_json(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_finite_json(item)
    return value
