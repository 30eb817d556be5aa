"""Mutation testing of the core modules with mutmut 3, one module at a time, each against its own tests.

Setup (once, in the repository's virtual environment):  pip install mutmut==3.8.1

    python benchmarks/mutation_test.py                              # every module, then the table
    python benchmarks/mutation_test.py --modules bd_loss hes --max-children 2 --out mutation-report
    python benchmarks/mutation_test.py --survivors projection       # survivors of the last run: names + diffs
    python benchmarks/mutation_test.py --report-only --out DIR      # table (and survivor files) of the last runs

Each module runs in its own scratch folder mutants/<module>/ (git-ignored; nothing else in the working tree is
written): a setup.cfg with the [mutmut] section, a snapshot of wbsr_plugin/ and tests/, a small pytest plugin and
mutmut's own mutants/ folder. mutmut copies the whole package, so `import wbsr_plugin` finds the copy, but mutates
only the module (only_mutate). A run wipes the module's folder first; the folder stays for --survivors and for
mutmut's own commands (`cd mutants/<module> && mutmut results / show NAME / browse`) until --clean. Do not trust
`mutmut apply` for methods: mutmut 3.8.1 replaces the first method of that name in any class (of the snapshot).

Tests that start a fresh interpreter (CLI / training subprocesses, one DataLoader with 'spawn' workers) are
deselected (DESELECT): they are slow and mostly cannot see mutmut's in-process mutants. mutmut forks a child per
mutant: OMP/MKL threads are pinned to 1, and the plugin (PLUGIN) keeps tqdm and the training-progress tensor per
process. The survival rate is survived / (killed + survived); "timeout/suspicious" also counts segfaults (mutmut's
name for a child SIGKILLed at its CPU limit) and unchecked mutants. mutmut's progress is in mutants/<module>/run.log.
"""
import argparse
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
WORK = osp.join(REPO, 'mutants')
MUTMUT = osp.join(osp.dirname(sys.executable), 'mutmut')

# module -> (file to mutate, pytest selection). The extra tests reach functions of the module that its own test
# file does not (found with per-test coverage contexts over the whole suite).
MODULES = {
    **{name: (f'wbsr_plugin/losses/{name}.py',
              ['tests/losses/test_bd_loss.py', 'tests/losses/test_bd_loss_reference.py'])
       for name in ('bd_loss', 'balancing_tables')},
    **{name: (f'wbsr_plugin/data/{name}.py',
              ['tests/data/test_hes_sampling.py', 'tests/data/test_hes_dataset.py', 'tests/data/test_hes_prepare.py',
               'tests/data/test_hes_index.py',
               'tests/models/test_dynamic_model.py::test_distillation_off_trains_as_before'])  # dataset_threshold_table
       for name in ('hes', 'hes_index', 'paired_reading')},
    'difficulty': ('wbsr_plugin/data/difficulty.py',
                   ['tests/data/test_difficulty.py', 'tests/data/test_difficulty_reference.py',
                    'tests/data/test_hes_sampling.py', 'tests/inference/test_engine_runs.py']),
    **{name: (f'wbsr_plugin/inference/{name}.py',
              ['tests/inference/test_tiling.py', 'tests/inference/test_projection.py', 'tests/inference/test_engine.py',
               'tests/inference/test_engine_runs.py', 'tests/inference/test_checkpoints.py',
               'tests/inference/test_calibration.py', 'tests/inference/test_checkpoint_compat.py',
               'tests/inference/test_class_thresholds.py', 'tests/inference/test_time_rules.py'])
       for name in ('projection', 'engine', 'tiling', 'planning', 'subnet_cache', 'class_thresholds', 'cost_model',
                    'time_rules')},
    'supernet_util': ('wbsr_plugin/archs/supernet_util.py',
                      ['tests/archs/test_archs.py', 'tests/archs/test_supernet_util.py',
                       'tests/cli/test_export.py::test_model_card_shows_what_the_checkpoint_holds']),
}
DESELECT = [  # subprocess (CLI, training) and spawn-worker tests of the selected files
    'tests/losses/test_bd_loss.py::test_cli_on_fixtures',
    'tests/data/test_hes_prepare.py::test_train_pipeline_with_lmdb_switch_and_auto_resume',
    'tests/data/test_hes_dataset.py::test_spawn_workers_see_the_published_iteration',
    'tests/cli/test_infer.py::test_cli_bad_inputs_skip_and_fail',
    'tests/inference/test_calibration.py::test_checkpoints_store_the_class_errors_of_training_patches',
]
CONFIG = """[mutmut]
source_paths = wbsr_plugin
only_mutate = {target}
pytest_add_cli_args_test_selection =
{selection}
pytest_add_cli_args =
    -pno:cacheprovider
    -pmutmut_fork_safety
also_copy = mutmut_fork_safety.py
use_git_change_detection = false
"""
# pytest plugin for the forking mutmut process. Without it tqdm's monitor thread and its lock (a semaphore shared by
# every forked child) deadlock all later children once one exits holding it (every later mutant times out), and
# concurrent children share the parent's shared-memory training-progress tensor, so one child's
# publish_training_progress() fails another's HES test (hundreds of false kills).
PLUGIN = """import threading
import torch
import tqdm.std
torch.set_num_threads(1)
tqdm.std.tqdm.monitor_interval = 0
tqdm.std.tqdm.set_lock(threading.RLock())


def pytest_sessionstart(session):
    from wbsr_plugin.data import training_progress
    training_progress._PROGRESS = None  # a tensor of this child's own
"""
COLUMNS = ['module', 'mutants', 'killed', 'survived', 'timeout/suspicious', 'no tests', 'survival rate', 'wall']


def module_dir(name):
    return osp.join(WORK, name)


def mutmut(name, *args, log=None, python=False):
    """Run the mutmut CLI (or python) in the module's scratch folder; return its stdout (or write it to ``log``)."""
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1')
    env.pop('PYTHONPATH', None)  # the mutated copy must come first on sys.path, which mutmut arranges
    with open(log or os.devnull, 'w') as log_file:
        proc = subprocess.run([sys.executable if python else MUTMUT, *args], cwd=module_dir(name), env=env,
                              stdout=log_file if log else subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        text = open(log).read() if log else proc.stdout
        raise RuntimeError(f'mutmut {" ".join(args)} failed for {name} ({proc.returncode}):\n{text[-3000:]}')
    return proc.stdout


def prepare(name):
    target, tests = MODULES[name]
    tests = [t for t in tests if osp.exists(osp.join(REPO, t.split('::')[0]))]  # files not written yet are left out
    files = {t.split('::')[0] for t in tests}
    selection = tests + [f'--deselect={d}' for d in DESELECT if d.split('::')[0] in files]
    folder = module_dir(name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for sub in ('wbsr_plugin', 'tests'):  # tests/ is in mutmut's default also_copy
        shutil.copytree(osp.join(REPO, sub), osp.join(folder, sub), ignore=shutil.ignore_patterns('__pycache__'))
    with open(osp.join(folder, 'setup.cfg'), 'w') as f:
        f.write(CONFIG.format(target=target, selection='\n'.join('    ' + s for s in selection)))
    with open(osp.join(folder, 'mutmut_fork_safety.py'), 'w') as f:
        f.write(PLUGIN)


def statuses(name):
    """mutant name -> status, from ``mutmut results --all true``."""
    lines = mutmut(name, 'results', '--all', 'true').splitlines()
    return dict(m.groups() for m in (re.fullmatch(r'\s+(\S+): (.+)', line) for line in lines) if m)


def row(name, wall=None):
    counts = {}
    for status in statuses(name).values():
        counts[status] = counts.get(status, 0) + 1
    killed, survived, no_tests = counts.get('killed', 0), counts.get('survived', 0), counts.get('no tests', 0)
    total = sum(counts.values())
    rate = f'{100 * survived / (killed + survived):.1f}%' if killed + survived else '-'
    return [name, total, killed, survived, total - killed - survived - no_tests, no_tests, rate,
            '-' if wall is None else f'{wall / 60:.1f} min']


def survivors(name):
    """The ``mutmut show`` text (``# NAME: survived`` and the diff) of each surviving mutant of the last run."""
    names = sorted(n for n, s in statuses(name).items() if s == 'survived')
    # one process for all: `mutmut show NAME` is this callback, and each mutmut start costs about a second
    show = 'import sys; from mutmut.__main__ import show; [show.callback(n) or print("\\f") for n in sys.argv[1:]]'
    out = mutmut(name, '-c', show, *names, python=True) if names else ''
    return [block.strip() for block in out.split('\f') if block.strip()]


def markdown(rows):
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    return '\n'.join(lines + ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--modules', nargs='+', choices=list(MODULES), default=list(MODULES))
    parser.add_argument('--max-children', type=int, default=2, help='mutants tested in parallel (default 2)')
    parser.add_argument('--out', help='folder for mutation-table.md and one <module>-survivors.txt per module')
    parser.add_argument('--survivors', metavar='MODULE', choices=list(MODULES),
                        help="print the surviving mutants (names and diffs) of MODULE's last run, run nothing")
    parser.add_argument('--report-only', action='store_true', help='report the last runs, run nothing')
    parser.add_argument('--clean', action='store_true', help='delete mutants/<module>/ after reporting')
    args = parser.parse_args()
    if not osp.exists(MUTMUT):
        sys.exit(f'mutmut not found next to {sys.executable}; pip install mutmut==3.8.1')
    if args.survivors:
        print('\n\n'.join(survivors(args.survivors)))
        return

    rows = []
    for name in args.modules:
        wall_file = osp.join(module_dir(name), 'wall_seconds')
        try:
            if not args.report_only:
                prepare(name)
                print(f'[{name}] mutmut run (log: {osp.relpath(module_dir(name))}/run.log)', flush=True)
                start = time.time()
                mutmut(name, 'run', '--max-children', str(args.max_children), log=osp.join(module_dir(name), 'run.log'))
                with open(wall_file, 'w') as f:
                    f.write(f'{time.time() - start:.1f}\n')
            elif not osp.isdir(module_dir(name)):
                continue
            rows.append(row(name, float(open(wall_file).read()) if osp.exists(wall_file) else None))
            if args.out:
                os.makedirs(args.out, exist_ok=True)
                with open(osp.join(args.out, f'{name}-survivors.txt'), 'w') as f:
                    f.writelines(diff + '\n\n' for diff in survivors(name))
        except RuntimeError as err:  # report the others anyway
            print(f'[{name}] FAILED: {err}', file=sys.stderr)
            rows.append([name, 'failed'] + ['-'] * (len(COLUMNS) - 2))
        print(f'[{name}] ' + ', '.join(f'{c}: {v}' for c, v in zip(COLUMNS[1:], rows[-1][1:])), flush=True)
        if args.clean:
            shutil.rmtree(module_dir(name), ignore_errors=True)

    table = markdown(rows)
    print('\n' + table)
    if args.out:
        with open(osp.join(args.out, 'mutation-table.md'), 'w') as f:
            f.write(table)
        print(f'wrote {args.out}/mutation-table.md and <module>-survivors.txt')
    if not args.clean:
        print(f'mutmut state: {osp.relpath(WORK)}/<module>/ (delete it, or run with --clean)')


if __name__ == '__main__':
    main()
