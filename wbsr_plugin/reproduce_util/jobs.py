"""Training subprocesses, several at once (``reproduce --jobs N``), each with its own log file and device."""
import collections
import os
import subprocess
import time

from wbsr_plugin.cli.sharding import available_cpus

from .run_progress import LogProgress

Job = collections.namedtuple('Job', ['name', 'args', 'log_path', 'total_iter'], defaults=(None, ))
LOG_TAIL_LINES = 30
POLL_SECONDS = 0.2
PROGRESS_SECONDS = 60  # least time between two progress lines of one run (its first iteration is shown at once)
TERMINATE_GRACE_SECONDS = 10


class JobsFailed(RuntimeError):
    """One or more subprocesses exited with an error (the message names each one's log file)."""


def share_of_machine(jobs, num_worker, cpus=None):
    """Loader workers and CPU threads of each of ``jobs`` runs sharing one machine.

    Args:
        jobs (int): Runs at once.
        num_worker (int): Loader workers of the whole machine (a preset's ``num_worker``).
        cpus (int | None): CPU cores. Default: None (those this process may use).

    Returns:
        tuple[int, int]: ``num_worker // jobs`` (at least 1 unless ``num_worker`` is 0) and
        ``cpus // jobs`` threads (at least 1).
    """
    if jobs < 1:
        raise ValueError(f'jobs must be at least 1, got {jobs}.')
    cpus = available_cpus() if cpus is None else cpus
    workers = 0 if num_worker == 0 else max(1, num_worker // jobs)
    return workers, max(1, cpus // jobs)


def one_device_each(slots, device_count, visible=None):
    """The CUDA device of each of ``slots`` runs at once: slot ``i`` sees only device ``i % device_count``.

    Args:
        slots (int): Runs at once.
        device_count (int): CUDA devices this process sees (0: none; the runs train on the CPU).
        visible (str | None): The user's ``CUDA_VISIBLE_DEVICES``, whose entries (indices or UUIDs) are
            handed out; None or empty: devices ``0 .. device_count - 1``. Default: None.

    Returns:
        list[dict]: Per slot, the environment entries to add: ``{'CUDA_VISIBLE_DEVICES': device}``,
        or ``{}`` without CUDA devices.
    """
    if slots < 1:
        raise ValueError(f'slots must be at least 1, got {slots}.')
    if device_count < 1:
        return [{} for _ in range(slots)]
    entries = [entry.strip() for entry in visible.split(',')] if visible else []
    devices = entries[:device_count] or [str(index) for index in range(device_count)]
    return [{'CUDA_VISIBLE_DEVICES': devices[slot % len(devices)]} for slot in range(slots)]


def _tail(path, lines=LOG_TAIL_LINES):
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError as err:
        return f'(log unreadable: {err})'


def _stop(procs):
    """Terminate running children, then kill those that outlive the grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Watch:
    """A running job's progress lines: its log read as it grows, a line at its first iteration, then at most one
    every ``every_s`` seconds."""

    def __init__(self, job, log, every_s):
        self.job, self.log, self.every_s = job, log, every_s
        self.progress = LogProgress(job.log_path, job.total_iter)
        self.last_shown = None

    def poll(self, final=False):
        """Show a progress line if the log has news and it is time (``final``: the job ended; shown if none was)."""
        now = time.monotonic()
        news = self.progress.poll()
        due = self.last_shown is None or now - self.last_shown >= self.every_s
        if (news and due) or (final and self.last_shown is None and self.progress.iteration is not None):
            self.last_shown = now
            self.log(f'{self.job.name}: {self.progress.line()}, log: {self.job.log_path}')


def run_jobs(jobs, parallel, cwd, env, log=print, slot_envs=None, progress_every_s=PROGRESS_SECONDS):
    """Run every job (a subprocess writing stdout and stderr to its log), ``parallel`` at a time.

    Jobs start in list order, each in a free one of ``parallel`` slots (the first ``parallel`` jobs in
    slots 0, 1, ...; a later job in the slot of a finished one). After a failure no new job starts;
    the running ones finish (their results stay usable on a rerun), then :class:`JobsFailed` names
    every failed job with its exit status, log file and the log's last lines. On
    ``KeyboardInterrupt`` (Ctrl-C) or any other exception the running children are terminated
    before it propagates.

    Args:
        jobs (list[Job]): ``name``, ``args`` (the command), ``log_path``.
        parallel (int): Subprocesses at once (>= 1).
        cwd (str): Working folder of every subprocess.
        env (dict | None): Their environment (None: this process's).
        log (callable): Progress messages. Default: print.
        slot_envs (list[dict] | None): Per slot, entries added to ``env`` for the job running in it
            (one device per slot: :func:`one_device_each`). Default: None (``env`` for all).
        progress_every_s (float): Each job's start is logged with its log file, then, read from that log, its
            first iteration and at most one line per ``progress_every_s`` seconds: the iteration, BasicSR's ETA
            and the log file. Default: :data:`PROGRESS_SECONDS`.

    Returns:
        dict: ``{name: seconds}`` of every job, from its start to its exit.
    """
    if parallel < 1:
        raise ValueError(f'parallel must be at least 1, got {parallel}.')
    slot_envs = slot_envs or [{}] * parallel
    if len(slot_envs) != parallel:
        raise ValueError(f'slot_envs holds {len(slot_envs)} environment(s) for {parallel} slot(s).')
    pending = collections.deque(jobs)
    free_slots = list(range(parallel))
    running = {}  # Popen -> (job, start time, log file, slot)
    watches = {}  # Popen -> _Watch
    seconds, failures = {}, []
    try:
        while pending or running:
            while pending and not failures and free_slots:
                job, slot = pending.popleft(), free_slots.pop(0)
                os.makedirs(os.path.dirname(os.path.abspath(job.log_path)), exist_ok=True)
                log_file = open(job.log_path, 'w', encoding='utf-8')
                job_env = {**(os.environ if env is None else env), **slot_envs[slot]} if slot_envs[slot] else env
                proc = subprocess.Popen(job.args, cwd=cwd, env=job_env, stdout=log_file, stderr=subprocess.STDOUT)
                running[proc] = (job, time.perf_counter(), log_file, slot)
                watches[proc] = _Watch(job, log, progress_every_s)
                log(f'{job.name}: started, log: {job.log_path}')
            if failures:
                pending.clear()
            for proc in running:
                watches[proc].poll()
            for proc in [p for p in running if p.poll() is not None]:
                job, start, log_file, slot = running.pop(proc)
                watches.pop(proc).poll(final=True)
                free_slots.append(slot)
                log_file.close()
                seconds[job.name] = time.perf_counter() - start
                if proc.returncode != 0:
                    failures.append((job, proc.returncode))
                    log(f'{job.name} failed (exit {proc.returncode}); log: {job.log_path}')
                else:
                    log(f'{job.name}: {seconds[job.name]:.0f} s')
            if running:
                time.sleep(POLL_SECONDS)
    except BaseException:
        _stop(list(running))
        for _, _, log_file, _ in running.values():
            log_file.close()
        raise
    if failures:
        raise JobsFailed('\n'.join(f'{job.name} failed (exit {code}); log: {job.log_path}\n'
                                   f'--- last lines of {job.log_path} ---\n{_tail(job.log_path)}'
                                   for job, code in failures))
    return seconds
