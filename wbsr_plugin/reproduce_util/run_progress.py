"""Progress of a training run read from its log as it grows: BasicSR's ``MessageLogger`` lines
``[name..][epoch:  0, iter:   1,200, lr:(...)] [eta: 1:02:03, time (data): ...]``.
"""
import re

ITER_PATTERN = re.compile(r'\[epoch:\s*\d+, iter:\s*([\d,]+)')  # not 'Start training from epoch: 0, iter: 0'
ETA_PATTERN = re.compile(r'\[eta:\s*([^,\]]+)')


class LogProgress:
    """The newest iteration and ETA in a training log, read incrementally (only the bytes added since the last
    :meth:`poll`).

    Args:
        path (str): The log file (it may not exist yet).
        total_iter (int | None): The run's ``train.total_iter``, shown after the iteration. Default: None.

    Attributes:
        iteration (int | None): The newest logged iteration (None before the first).
        eta (str | None): BasicSR's estimate of the time left, as logged with it.
    """

    def __init__(self, path, total_iter=None):
        self.path = path
        self.total_iter = total_iter
        self.iteration = None
        self.eta = None
        self._offset = 0
        self._partial = ''

    def poll(self):
        """Read what the log gained; True when it logged a new iteration."""
        try:
            with open(self.path, 'rb') as f:
                f.seek(self._offset)
                added = f.read()
        except OSError:
            return False
        self._offset += len(added)
        lines = (self._partial + added.decode('utf-8', errors='replace')).split('\n')
        self._partial = lines.pop()
        before = self.iteration
        for line in lines:
            found = ITER_PATTERN.search(line)
            if found:
                self.iteration = int(found[1].replace(',', ''))
                eta = ETA_PATTERN.search(line)
                self.eta = eta[1].strip() if eta else None
        return self.iteration != before

    def line(self):
        """``iter 1200/200000, eta 1:02:03`` (what is known)."""
        of = f'/{self.total_iter}' if self.total_iter else ''
        eta = f', eta {self.eta}' if self.eta else ''
        return f'iter {self.iteration}{of}{eta}'
