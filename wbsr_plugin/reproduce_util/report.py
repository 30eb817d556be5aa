"""results.md (the paper's Tables 1-2 on our runs) and the PSNR-vs-FLOPs plot."""
import sys
from os import path as osp

import numpy as np

from wbsr_plugin.file_util import atomic_path, atomic_write_text

from .rows import NET_LABELS, ROW_LABELS, table_rows

DYNAMIC_ROWS = ('classsr', 'arm', 'hes', 'bdloss', 'wbsr')


def spread(values):
    """(mean, half-range) of a list of numbers."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float((values.max() - values.min()) / 2)


def gather(results, row, setting, test, key):
    return [seeds[row][setting][test][key] for seeds in results if row in seeds and setting in seeds[row]]


def _cell(values, digits):
    mean, half = spread(values)
    return f'{mean:.{digits}f} ± {half:.{digits}f}' if len(values) > 1 else f'{mean:.{digits}f}'


def verdict(row_values, ref_values):
    """'tie', 'better' or 'worse' than the reference: a gap within the larger half-range is a tie."""
    row_mean, row_half = spread(row_values)
    ref_mean, ref_half = spread(ref_values)
    gap = row_mean - ref_mean
    if len(row_values) < 2 or len(ref_values) < 2:
        return f'{gap:+.3f} dB (one seed: no spread)'
    if abs(gap) <= max(row_half, ref_half):
        return f'{gap:+.3f} dB: tie'
    return f'{gap:+.3f} dB: {"better" if gap > 0 else "worse"}'


def backbone_tables(backbone, per_seed, tests):
    """Markdown lines of one backbone: default operating points and matched FLOPs."""
    results = [r['rows'] for r in per_seed.values()]
    net = NET_LABELS[backbone]
    head = '| method | ' + ' | '.join(f'{t} PSNR | {t} SSIM | {t} GFLOPs (%)' for t in tests) + ' |'
    rule = '|---|' + '---|---|---|' * len(tests)
    lines = [f'### {net}: each method at its own default', '', head, rule]
    for row in table_rows(backbone):
        cells = []
        for t in tests:
            cells += [_cell(gather(results, row, 'default', t, 'psnr'), 2),
                      _cell(gather(results, row, 'default', t, 'ssim'), 4),
                      f"{_cell(gather(results, row, 'default', t, 'gflops_per_32x32'), 2)} "
                      f"({np.mean(gather(results, row, 'default', t, 'flops_percent')):.0f} %)"]
        lines.append(f'| {ROW_LABELS[row].format(net=net)} | ' + ' | '.join(cells) + ' |')
    fractions = {t: [r['matched_fraction'][t] for r in per_seed.values()] for t in tests}
    lines += ['', f'### {net}: dynamic methods at matched FLOPs',
              '', 'Budget per image = the +WBSR default spending on that test set (seed by seed): ' +
              ', '.join(f'{t} {100 * np.mean(f):.0f} %' for t, f in fractions.items()) +
              '. Verdict: PSNR gap to +WBSR; a gap within the larger seed half-range is a tie.', '',
              '| method | ' + ' | '.join(f'{t} PSNR | {t} SSIM | {t} GFLOPs (%) | {t} vs +WBSR' for t in tests) + ' |',
              '|---|' + '---|---|---|---|' * len(tests)]
    for row in [r for r in DYNAMIC_ROWS if r in table_rows(backbone)]:
        cells = []
        for t in tests:
            psnr = gather(results, row, 'matched', t, 'psnr')
            cells += [_cell(psnr, 2), _cell(gather(results, row, 'matched', t, 'ssim'), 4),
                      f"{_cell(gather(results, row, 'matched', t, 'gflops_per_32x32'), 2)} "
                      f"({np.mean(gather(results, row, 'matched', t, 'flops_percent')):.0f} %)",
                      '-' if row == 'wbsr' else verdict(psnr, gather(results, 'wbsr', 'matched', t, 'psnr'))]
        lines.append(f'| {ROW_LABELS[row]} | ' + ' | '.join(cells) + ' |')
    arm = [r['arm'] for r in per_seed.values()]
    lines += ['', 'ARM default eta (validation, per seed): ' + ', '.join(f"{a['eta']:.3g}" for a in arm) +
              f"; "
              f"table from {arm[0]['val_patches']} held-out training patches.", '']
    return lines


def write_results(path, preset, data, test_sets, all_results, command, timings):
    """Write results.md atomically; returns its text."""
    tests = list(test_sets)
    lines = ['# Reproduction of WBSR Tables 1-2', '',
             f'Command: `{command}`', '',
             f"Preset `{preset['name']}`: x{preset['scale']}, seeds {preset['seeds']}, every row "
             f"{preset['total_iter']} iterations x batch {preset['batch_size']} ({preset['gt_size']}x{preset['gt_size']} "
             f"HR patches), Adam lr {preset['lr']:g} cosine to {preset['eta_min']:g}, EMA {preset['ema_decay']}. "
             f"Training images: {len(data['train_images'])} (cropped {preset['subimage_crop']}/"
             f"{preset['subimage_step']}); held out for ARM's table: {len(data['held_out_images'])}. "
             'Test sets (HR, LR by MATLAB bicubic): ' + ', '.join(f'{k} = {v}' for k, v in test_sets.items()) + '.',
             '',
             f"Dynamic inference: LR patches of {preset['patch_size']} px, overlap {preset['overlap']}; class "
             'thresholds from the training patches. PSNR/SSIM on Y, border = scale. GFLOPs per 32x32 LR patch '
             '(overlaps counted); % = of the plain network on the whole image. Values: mean ± half-range over '
             'seeds. Options of every run: `runs/options/`; per-seed numbers: `eval/`.', '']
    for backbone, per_seed in all_results.items():
        lines += backbone_tables(backbone, per_seed, tests)
    if timings:
        lines += ['Training time of the runs trained by this invocation: ' +
                  ', '.join(f'{k} {v:.0f} s' for k, v in timings.items()), '']
    text = '\n'.join(lines) + '\n'
    atomic_write_text(path, text)
    return text


def write_plot(path, all_results, test_sets):
    """PSNR vs GFLOPs per 32x32 patch, one panel per test set; skipped when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot as plt
    except ImportError:
        print('matplotlib is not installed: the PSNR-vs-FLOPs plot is skipped (pip install matplotlib).',
              file=sys.stderr)
        return False
    tests = list(test_sets)
    fig, axes = plt.subplots(1, len(tests), figsize=(6 * len(tests), 4.5), squeeze=False)
    for ax, t in zip(axes[0], tests):
        for backbone, per_seed in all_results.items():
            results = [r['rows'] for r in per_seed.values()]
            for row in table_rows(backbone):
                for setting, marker in (('default', 'o'), ('matched', 's')):
                    x = gather(results, row, setting, t, 'gflops_per_32x32')
                    y = gather(results, row, setting, t, 'psnr')
                    if x:
                        ax.errorbar(np.mean(x), np.mean(y), yerr=spread(y)[1], fmt=marker,
                                    label=f'{NET_LABELS[backbone]} {ROW_LABELS[row].format(net="")} ({setting})')
            budgets = sorted(results[0]['wbsr']['sweep'], key=float)
            xs = [np.mean([r['wbsr']['sweep'][b][t]['gflops_per_32x32'] for r in results]) for b in budgets]
            ys = [np.mean([r['wbsr']['sweep'][b][t]['psnr'] for r in results]) for b in budgets]
            ax.plot(xs, ys, '-', color='gray', label=f'{NET_LABELS[backbone]} +WBSR budget sweep')
        ax.set_title(t)
        ax.set_xlabel('GFLOPs per 32x32 LR patch')
        ax.set_ylabel('PSNR-Y (dB)')
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc='lower right')
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=120)
    plt.close(fig)
    return osp.isfile(path)
