"""Progress while long runs run: a line per training run of ``reproduce`` read from its log, and bars only where
someone watches (stderr a terminal, rank 0)."""
import io
import sys

import pytest

from wbsr_plugin.reproduce_util.jobs import Job, run_jobs
from wbsr_plugin.reproduce_util.run_progress import LogProgress
from wbsr_plugin.utils.progress import progress_bar, show_progress

# BasicSR's MessageLogger lines, as train_pipeline prints them
LOGGED = ("print('2024-01-01 INFO: [toy..][epoch:  0, iter: {iter:>7}, lr:(5.000e-04,)] [eta: {eta}, time (data): '"
          "'0.5 (0.1)] l_pix: 1.0e-01', flush=True)")
TRAINING = '\n'.join([
    'import time',
    "print('2024-01-01 INFO: Start training from epoch: 0, iter: 0', flush=True)",
    'time.sleep({pause})', LOGGED.format(iter='1', eta='0:00:07'),
    'time.sleep({pause})', LOGGED.format(iter='1,200', eta='0:00:01'),
    'time.sleep({pause})',
])


def test_each_training_run_shows_its_iteration_eta_and_log_while_it_runs(tmp_path):
    messages = []
    jobs = [Job(name, [sys.executable, '-c', TRAINING.format(pause=1.0)], str(tmp_path / f'{name}.log'), 1200)
            for name in ('a', 'b')]
    run_jobs(jobs, 2, str(tmp_path), None, log=messages.append, progress_every_s=0)
    for name in ('a', 'b'):
        log_path = tmp_path / f'{name}.log'
        lines = [m for m in messages if m.startswith(f'{name}:')]
        assert lines[0] == f'{name}: started, log: {log_path}'
        assert f'{name}: iter 1/1200, eta 0:00:07, log: {log_path}' in lines
        assert f'{name}: iter 1200/1200, eta 0:00:01, log: {log_path}' in lines
        assert lines[-1].startswith(f'{name}: ') and lines[-1].endswith(' s')  # the end, after the progress
    quiet = []  # one line per interval at most: the first iteration at once, then nothing for an hour
    run_jobs(jobs[:1], 1, str(tmp_path), None, log=quiet.append, progress_every_s=3600)
    assert [m for m in quiet if ' iter ' in m] == [f"a: iter 1/1200, eta 0:00:07, log: {tmp_path / 'a.log'}"]


def test_a_run_too_quick_to_watch_still_shows_its_last_iteration(tmp_path):
    messages = []
    job = Job('quick', [sys.executable, '-c', TRAINING.format(pause=0)], str(tmp_path / 'quick.log'))
    run_jobs([job], 1, str(tmp_path), None, log=messages.append)
    assert any(m.startswith('quick: iter ') and 'log: ' in m for m in messages)


def test_log_progress_reads_only_what_was_added(tmp_path):
    path = tmp_path / 'train.log'
    progress = LogProgress(str(path), total_iter=2000)
    assert not progress.poll() and progress.iteration is None  # no log yet
    path.write_text('[x..][epoch:  1, iter:   1,5')  # a line still being written
    assert not progress.poll()
    with open(path, 'a') as f:
        f.write('00, lr:(1.0e-04,)] [eta: 2:03:04, time (data): 0.1 (0.0)]\nvalidation ...\n')
    assert progress.poll() and progress.line() == 'iter 1500/2000, eta 2:03:04'
    assert not progress.poll()


class Terminal(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize('tty, env, shown', [(True, {}, True), (False, {}, False), (True, {'RANK': '1'}, False),
                                             (True, {'RANK': '0', 'LOCAL_RANK': '0'}, True),
                                             (True, {'LOCAL_RANK': '2'}, False)])
def test_bars_only_in_a_terminal_on_rank_0(tty, env, shown, monkeypatch):
    for name in ('RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert show_progress(Terminal(tty)) is shown
    monkeypatch.setattr(sys, 'stderr', Terminal(tty))
    assert progress_bar(range(3)).disable is not shown
    assert list(progress_bar(range(3))) == [0, 1, 2]
