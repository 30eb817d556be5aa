"""Text descriptions of a supernet: its subnet table and the model card of a trained checkpoint."""
import math

from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE
from wbsr_plugin.inference.checkpoint import DIFFICULTY_NAME, WBSR_KEY


def format_subnet_table(net, lq_size=REFERENCE_LQ_SIZE, extra_columns=None):
    """The subnet table of ``net`` as Markdown.

    Args:
        net (SupernetMixin): The supernet.
        lq_size (int): LR patch side the FLOPs are given for. Default: 32.
        extra_columns (dict[str, list] | None): More columns, header -> one value per subnet in
            cost order. Default: None.
    """
    extra_columns = extra_columns or {}
    for header, values in extra_columns.items():
        if len(values) != len(net.subnets):
            raise ValueError(f'column {header!r} has {len(values)} values for {len(net.subnets)} subnets.')
    headers = ['index', 'width', 'depth', 'name', 'params (M)', 'GFLOPs', '% of full', *extra_columns]
    lines = [
        f'{type(net).__name__} x{net.upscale}, LR input {lq_size}x{lq_size}', '', '| ' + ' | '.join(headers) + ' |',
        '|' + '---|' * len(headers)
    ]
    for row, (spec, (index, width, depth, params, gflops, percent)) in enumerate(
            zip(net.subnets, net.subnet_table(lq_size))):
        cells = [index, width, depth, spec.name, f'{params / 1e6:.3f}', f'{gflops:.3f}', f'{percent:.1f}']
        cells += [values[row] for values in extra_columns.values()]
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    return '\n'.join(lines)


def _numbers(values):
    return '[' + ', '.join(f'{v:.4g}' for v in values) + ']'


def format_model_card(net, meta, path, lq_size=REFERENCE_LQ_SIZE):
    """What a trained checkpoint holds, as Markdown.

    Args:
        net (SupernetMixin): The supernet built from the checkpoint
            (:func:`wbsr_plugin.inference.checkpoint.load_supernet`).
        meta (dict): The checkpoint's ``'wbsr'`` entry ({} when it has none).
        path (str): The checkpoint file (shown in the title).
        lq_size (int): LR patch side of the FLOPs in the subnet table. Default: 32.
    """
    name = type(net).__name__
    full = net.full_subnet
    lines = [f'# {path}', '']
    arch = (f'{name} x{net.upscale}: num_feat {net.num_feat}, num_block {net.num_block}, '
            f'widths {list(net.widths)}, depths {list(net.depths)}')
    arch += ''.join(f', {key} {getattr(net, key)}' for key in net.CARD_OPTIONS)
    rows = [('architecture', arch),
            ('full network', f'{full.params / 1e6:.3f} M parameters, {net.flops(lq_size) / 1e9:.3f} GFLOPs per '
             f'{lq_size}x{lq_size} LR patch')]
    if not meta:
        rows.append(('metadata', f"none (no '{WBSR_KEY}' entry): architecture read from the tensor shapes, "
                     'the paper\'s widths and depths assumed; inference uses per-image quantile thresholds'))
    else:
        iteration = meta.get('iter')
        rows.append(('training iterations', 'not recorded' if iteration is None else str(iteration)))
        thresholds = meta.get('thresholds')
        if thresholds is None:
            rows.append(('thresholds', 'none stored: inference uses per-image quantiles of the patch difficulties'))
        else:
            rows.append(('thresholds', f"{len(thresholds) + 1} classes, for {meta.get('patch_size')}x"
                         f"{meta.get('patch_size')} LR patches: {_numbers(thresholds)}"))
        for size, values in sorted((meta.get('thresholds_by_patch_size') or {}).items(), key=lambda kv: int(kv[0])):
            rows.append((f'thresholds at {size}x{size}', _numbers(values)))
        errors = meta.get('class_errors')
        if errors is None:
            rows.append(('class errors', 'none stored: budgets follow Eq. 16 (cost order)'))
        else:
            # what the full network saves over the cheapest subnet, per class, in dB
            saved = [10 * math.log10(row[0] / row[-1]) if row[-1] > 0 else float('inf') for row in errors]
            calibration = meta.get('calibration') or {}
            where = (f"{sum(calibration['counts'])} patches of {calibration.get('data', 'unknown data')}"
                     if calibration.get('counts') else 'training patches')
            rows.append(('class errors', f'{len(errors)} classes x {len(errors[0])} subnets, measured on {where} '
                         '(budgets spend by them); full network over the cheapest subnet, dB per class: '
                         + _numbers(saved)))
        if meta.get('difficulty') not in (None, DIFFICULTY_NAME):
            rows.append(('difficulty', f"{meta['difficulty']} (this package uses {DIFFICULTY_NAME})"))
        rows.append(('metadata version', str(meta.get('version'))))
    lines += ['| | |', '|---|---|'] + [f'| {key} | {value} |' for key, value in rows]
    lines += ['', format_subnet_table(net, lq_size)]
    return '\n'.join(lines)
