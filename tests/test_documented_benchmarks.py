"""Every benchmark command written in README.md and docs/*.md runs on the current code, at tiny sizes.

Each command is taken from the docs as written, its data paths (``../shared/...``, ``OUT/...``,
``photo.jpg``) replaced by tiny stand-ins, and options that only set the problem size appended, so
that the documented flags are parsed and the documented code paths run in seconds.
"""
import glob
import importlib.util
import re
import shlex
from os import path as osp

import cv2
import pytest
import torch
from conftest import FIXTURES, REPO_ROOT, TINY_SUPERNETS

from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta
from wbsr_plugin.losses.gmm_prior_util import fit_gmm_prior, save_gmm_prior

from basicsr.archs import build_network

DOCS = [osp.join(REPO_ROOT, 'README.md')] + sorted(glob.glob(osp.join(REPO_ROOT, 'docs', '*.md')))
COMMAND = re.compile(r'python (benchmarks/bench_\w+\.py)\b([^#\n]*)')
HR = osp.join(FIXTURES, 'hr')

# Options appended to every command of a script: they shrink the problem, nothing else.
TINY = {
    'bench_bf16_quality.py': ['--max-side', '64'],
    'bench_torch_compile.py': ['--subnets', '0', '--shapes', '1x8x8', '--repeat', '1', '--backend', 'aot_eager'],
    'bench_bdloss.py': ['--batch', '2', '--lr-size', '8', '--iters', '1', '--warmup', '0', '--num-refs', '8'],
    'bench_budget_gap.py': ['--patch-size', '12', '--overlap', '2'],
    'bench_distill.py': ['--holdout', '1', '--iters', '2', '--weights', '0,1'],
    'bench_export.py': [],
    'bench_infer_folder.py': ['--images', '2', '--lq-size', '16x12', '--repeat', '1', '--data', HR],
    'bench_inference.py': ['--lq-sizes', '24x16', '--budgets', '0.6', '--repeat', '1', '--patch-sizes', '12',
                           '--patch-size', '12', '--overlap', '2'],
    'bench_loader.py': ['--batches', '1', '--workers', '0', '--repeats', '1'],
    'bench_runtimes.py': ['--sizes', '16x12', '--repeat', '1', '--runtimes', 'torch fp32'],
    'bench_reproduce_runs.py': ['--preset', 'toy', '--iters', '6', '--rows', 'plain'],
    'bench_sharded_infer.py': ['--images', '2', '--size', '16', '--settings', '1x1', '--repeat', '1'],
    'bench_quality_target.py': ['--limit', '1', '--targets', '0.03', '--max-side', '64', '--patch-size', '12',
                                '--overlap', '2'],
    'bench_soak.py': ['--images', '21', '--sizes', '12', '20', '--num-feat', '8', '--num-block', '4'],
    'bench_torch_free.py': ['--sizes', '16x12', '--repeat', '1', '--runtimes', 'onnxruntime fp32'],
    'bench_train_step.py': ['--batch', '1', '--gt-size', '16', '--repeat', '1', '--warmup', '0', '--no-distill'],
}


def documented_commands():
    """``(doc file, script, args)`` of every ``python benchmarks/...`` command in code spans and blocks."""
    found = []
    for doc in DOCS:
        with open(doc) as f:
            text = f.read()
        blocks = re.findall(r'```[^\n]*\n(.*?)```', text, re.S)
        spans = re.findall(r'`([^`]+)`', re.sub(r'```.*?```', '', text, flags=re.S))
        lines = [line for block in blocks for line in block.replace('\\\n', ' ').splitlines()]
        lines += [span.replace('\n', ' ') for span in spans]
        for line in lines:
            for match in COMMAND.finditer(line):
                found.append((osp.basename(doc), osp.basename(match.group(1)), shlex.split(match.group(2))))
    return found


COMMANDS = documented_commands()


def test_every_benchmark_is_documented():
    scripts = {osp.basename(path) for path in glob.glob(osp.join(REPO_ROOT, 'benchmarks', 'bench_*.py'))}
    assert scripts == {script for _, script, _ in COMMANDS} == set(TINY)


@pytest.fixture(scope='module')
def stand_ins(tmp_path_factory):
    """Tiny checkpoints, a prior and a folder of photos large enough for the loader benchmark."""
    root = tmp_path_factory.mktemp('stand_ins')
    paths = {}
    for name, opt in TINY_SUPERNETS.items():
        net = build_network(dict(opt, type=name, upscale=4))
        class_errors = [[0.01 / (1 + k + m) for m in range(len(net.subnets))] for k in range(10)]
        meta = make_wbsr_meta(net, [float(t) for t in range(2, 20, 2)], 12, class_errors=class_errors)
        paths[name] = str(root / f'{name}.pth')
        torch.save({'params': net.state_dict(), WBSR_KEY: meta}, paths[name])
    paths['prior'] = str(root / 'prior.pth')
    save_gmm_prior(fit_gmm_prior(HR, 4, num_components=2, num_iters=10), paths['prior'])
    from skimage import data
    (root / 'photos').mkdir()
    cv2.imwrite(str(root / 'photos' / 'astronaut.png'), data.astronaut()[..., ::-1])
    paths['photos'] = str(root / 'photos')
    return paths


def named_arch(args):
    """The supernet a documented command names (``--arch X``), else WBSRResNet."""
    return next((arg for arg in args if arg in TINY_SUPERNETS), 'WBSRResNet')


def stand_in_args(script, args, stand_ins, work):
    """``args`` with data paths replaced by stand-ins, and the tiny options appended."""
    out, option = [], None
    for arg in args:
        if option in ('--hr-dir', '--train-hr', '--report-dir', '--hr'):
            arg = HR
        elif option == '--data':
            arg = stand_ins['photos']
        elif option == '--image':
            arg = osp.join(HR, 'astronaut.png')
        elif option in ('--work', '--out'):
            arg = str(work)
        elif option == '--prior':
            arg = stand_ins['prior']
        elif option in ('--test', '--set'):
            arg = f"{arg.partition('=')[0]}={HR}"
        elif option in ('--model', '--calibration') and not arg.startswith('-'):
            arg = stand_ins[named_arch(args)]
        out.append(arg)
        option = arg if arg.startswith('-') else option if option == '--calibration' else None  # nargs='+'
    extra = list(TINY[script])
    if script == 'bench_inference.py':
        arch = named_arch(args)
        widths = [str(w) for w in TINY_SUPERNETS[arch]['widths']]
        extra += ['--arch', arch, '--widths', *widths, '--model', stand_ins[arch]]
    if script in ('bench_bdloss.py', 'bench_train_step.py') and '--prior' not in out:
        extra += ['--prior', stand_ins['prior']]
    if script in ('bench_export.py', 'bench_torch_free.py') and '--model' not in out:
        extra += ['--model', stand_ins['WBSRResNet']]
    if script == 'bench_loader.py' and '--work' not in out:
        extra += ['--work', str(work)]
    return out + extra


def load_script(script):
    spec = importlib.util.spec_from_file_location(f'documented_{script[:-3]}',
                                                  osp.join(REPO_ROOT, 'benchmarks', script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize('doc, script, args', COMMANDS, ids=[f'{d}:{s}:{i}' for i, (d, s, _) in enumerate(COMMANDS)])
def test_documented_command_runs_at_tiny_sizes(doc, script, args, stand_ins, tmp_path, capsys, restore_threads):
    if '--device' in args and args[args.index('--device') + 1] == 'cuda' and not torch.cuda.is_available():
        pytest.skip('a CUDA command')
    argv = stand_in_args(script, args, stand_ins, tmp_path)
    result = load_script(script).main(argv)
    assert result in (None, 0)
    assert capsys.readouterr().out.strip()  # it printed its table
