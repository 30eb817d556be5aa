"""results.md (the paper's Tables 1-2 on our runs) and the PSNR-vs-FLOPs plot."""
import sys
from os import path as osp

import numpy as np

from wbsr_runtime.files import atomic_path, atomic_write_text

from .rows import COMPARISONS, DYNAMIC_METHODS, ROW_LABELS, TABLE_ROWS, net_label, table_rows


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
    """'tie', 'better' or 'worse' than the reference: a gap within the larger half-range (or below 0.0005 dB,
    the precision shown) is a tie."""
    row_mean, row_half = spread(row_values)
    ref_mean, ref_half = spread(ref_values)
    gap = row_mean - ref_mean
    if len(row_values) < 2 or len(ref_values) < 2:
        return f'{gap:+.3f} dB (one seed: no spread)'
    if abs(gap) <= max(row_half, ref_half) or round(abs(gap), 3) == 0:
        return f'{gap:+.3f} dB: tie'
    return f'{gap:+.3f} dB: {"better" if gap > 0 else "worse"}'


def evaluated_rows(backbone, results, selected, reference=None):
    """Rows of ``selected`` (and the matched-FLOPs ``reference``) evaluated for every seed, in table order."""
    wanted = set(selected) | ({reference} if reference else set())
    return [r for r in table_rows(backbone) if r in wanted and all(r in seeds for seeds in results)]


def _label(row, net):
    return ROW_LABELS[row].format(net=net)


def backbone_tables(backbone, per_seed, tests, selected):
    """Markdown lines of one backbone: default operating points, matched FLOPs, causes."""
    results = [r['rows'] for r in per_seed.values()]
    reference = next(iter(per_seed.values())).get('matched_reference', 'wbsr')
    rows = evaluated_rows(backbone, results, selected, reference)
    net = net_label(backbone)
    head = '| method | ' + ' | '.join(f'{t} PSNR | {t} SSIM | {t} GFLOPs (%)' for t in tests) + ' |'
    rule = '|---|' + '---|---|---|' * len(tests)
    lines = [f'### {net}: each method at its own default', '', head, rule]
    for row in rows:
        cells = []
        for t in tests:
            cells += [_cell(gather(results, row, 'default', t, 'psnr'), 2),
                      _cell(gather(results, row, 'default', t, 'ssim'), 4),
                      f"{_cell(gather(results, row, 'default', t, 'gflops_per_32x32'), 2)} "
                      f"({np.mean(gather(results, row, 'default', t, 'flops_percent')):.0f} %)"]
        lines.append(f'| {_label(row, net)} | ' + ' | '.join(cells) + ' |')
    dynamic = [r for r in rows if TABLE_ROWS[r][1] in DYNAMIC_METHODS]
    if reference in rows and dynamic:
        ref_label = _label(reference, net)
        fractions = {t: [r['matched_fraction'][t] for r in per_seed.values()] for t in tests}
        lines += ['', f'### {net}: dynamic methods at matched FLOPs',
                  '', f'Budget per image = the {ref_label} default spending on that test set (seed by seed): ' +
                  ', '.join(f'{t} {100 * np.mean(f):.0f} %' for t, f in fractions.items()) +
                  f'. Verdict: PSNR gap to {ref_label}; a gap within the larger seed half-range is a tie.', '',
                  '| method | ' + ' | '.join(f'{t} PSNR | {t} SSIM | {t} GFLOPs (%) | {t} vs {ref_label}'
                                            for t in tests) + ' |',
                  '|---|' + '---|---|---|---|' * len(tests)]
        for row in dynamic:
            cells = []
            for t in tests:
                psnr = gather(results, row, 'matched', t, 'psnr')
                cells += [_cell(psnr, 2), _cell(gather(results, row, 'matched', t, 'ssim'), 4),
                          f"{_cell(gather(results, row, 'matched', t, 'gflops_per_32x32'), 2)} "
                          f"({np.mean(gather(results, row, 'matched', t, 'flops_percent')):.0f} %)",
                          '-' if row == reference else verdict(psnr, gather(results, reference, 'matched', t, 'psnr'))]
            lines.append(f'| {_label(row, net)} | ' + ' | '.join(cells) + ' |')
    lines += cause_lines(net, rows, results, tests)
    if all('arm' in r for r in per_seed.values()):
        arm = [r['arm'] for r in per_seed.values()]
        lines += ['', 'ARM default eta (validation, per seed): ' + ', '.join(f"{a['eta']:.3g}" for a in arm) +
                  f"; table from {arm[0]['val_patches']} held-out training patches."]
    return lines + ['']


def cause_lines(net, rows, results, tests):
    """Markdown lines of the comparisons (:data:`rows.COMPARISONS`) whose two rows were evaluated.

    Dynamic rows are compared at matched FLOPs, whole-image rows at their default.
    """
    found = [c for c in COMPARISONS if c[0] in rows and c[1] in rows]
    if not found:
        return []
    lines = ['', f'### {net}: separating the causes', '',
             'PSNR gap of a row to its reference (dynamic rows at matched FLOPs, whole-image rows on the whole '
             'image); a gap within the larger seed half-range is a tie.', '',
             '| what | row | reference | ' + ' | '.join(tests) + ' |', '|---|---|---|' + '---|' * len(tests)]
    for row, ref, what in found:
        dynamic = TABLE_ROWS[row][1] in DYNAMIC_METHODS and TABLE_ROWS[ref][1] in DYNAMIC_METHODS
        setting = 'matched' if dynamic else 'default'
        cells = [verdict(gather(results, row, setting, t, 'psnr'), gather(results, ref, setting, t, 'psnr'))
                 for t in tests]
        lines.append(f'| {what} | {_label(row, net)} | {_label(ref, net)} | ' + ' | '.join(cells) + ' |')
    return lines


def time_budget_lines(plan):
    """Markdown lines on how ``--time-budget`` chose the iterations (``plan`` from ``fit_time_budget``)."""
    probes = '; '.join(
        f"{backbone}: {len(b['probes'])} probe run(s) of `{b['kind']}`, slowest {1 / b['seconds_per_iter']:.2f} it/s "
        f"after warm-up, start-up and saving {b['startup_s']:.0f} s" for backbone, b in plan['backbones'].items())
    return [f"Iterations chosen by `--time-budget {plan['budget_s']:g}` with {plan['jobs']} run(s) at a time: "
            f"probe of {plan['probe_iter']} iterations ({probes}). Assuming every run of a backbone as slow as its "
            f"probe, {plan['runs']} run(s) fit {plan['total_iter']} iterations in {plan['planned_s']:.0f} s "
            f"(at most {100 * plan['safety']:.0f} % of the budget).", '']


def write_results(path, preset, data, test_sets, all_results, command, timings, time_budget=None, train_s=None):
    """Write results.md atomically; returns its text.

    ``time_budget`` is the plan of ``--time-budget`` (or None); ``train_s`` the wall time of the
    training step of this invocation (or None).
    """
    tests = list(test_sets)
    lines = ['# Reproduction of WBSR Tables 1-2', '',
             f'Command: `{command}`', '',
             f"Preset `{preset['name']}`: x{preset['scale']}, seeds {preset['seeds']}, every row "
             f"{preset['total_iter']} iterations x batch {preset['batch_size']} "
             f"({preset['gt_size']}x{preset['gt_size']} "
             f"HR patches), Adam lr {preset['lr']:g} cosine to {preset['eta_min']:g}, EMA {preset['ema_decay']}. "
             f"Training images: {len(data['train_images'])} (cropped {preset['subimage_crop']}/"
             f"{preset['subimage_step']}); held out for ARM's table: {len(data['held_out_images'])}. "
             f"Rows: {', '.join(preset['rows'])}. "
             'Test sets (HR, LR by MATLAB bicubic): ' + ', '.join(f'{k} = {v}' for k, v in test_sets.items()) + '.',
             '',
             f"Dynamic inference: LR patches of {preset['patch_size']} px, overlap {preset['overlap']}; class "
             'thresholds from the training patches; budgets spend by the class errors a checkpoint stores '
             '(`wbsr.calibration_patches`). PSNR/SSIM on Y, border = scale. GFLOPs per 32x32 LR patch '
             '(overlaps counted); % = of the plain network on the whole image. Values: mean ± half-range over '
             'seeds. Options of every run: `runs/options/`; per-seed numbers: `eval/`.', '']
    if time_budget:
        lines += time_budget_lines(time_budget)
    for backbone, per_seed in all_results.items():
        lines += backbone_tables(backbone, per_seed, tests, preset['rows'])
    if timings:
        lines += ['Training time of the runs trained by this invocation' +
                  (f" ({train_s:.0f} s in all, {preset.get('jobs', 1)} at a time)" if train_s is not None else '') +
                  ': ' + ', '.join(f'{k} {v:.0f} s' for k, v in timings.items()), '']
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
                                    label=f'{net_label(backbone)} {ROW_LABELS[row].format(net="")} ({setting})')
            if not all('sweep' in r.get('wbsr', {}) for r in results):
                continue
            budgets = sorted(results[0]['wbsr']['sweep'], key=float)
            xs = [np.mean([r['wbsr']['sweep'][b][t]['gflops_per_32x32'] for r in results]) for b in budgets]
            ys = [np.mean([r['wbsr']['sweep'][b][t]['psnr'] for r in results]) for b in budgets]
            ax.plot(xs, ys, '-', color='gray', label=f'{net_label(backbone)} +WBSR budget sweep')
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
