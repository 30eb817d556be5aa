"""Training logs that stay on the device until they are printed.

BasicSR's ``reduce_loss_dict`` reads every loss to the host at every step, and each read waits for the device; its
training loop reads the log only every ``logger.print_freq`` iterations. :class:`DeferredLogMixin` keeps the values
on the device and reads them when the loop asks.
"""
from collections import OrderedDict

import torch


def log_to_floats(log, rank_mean_keys=(), world_size=1):
    """The log as plain floats, read from the device in one transfer.

    Args:
        log (dict): Log entries: tensors (their mean is logged) or numbers.
        rank_mean_keys (Iterable[str]): Entries averaged over the ranks (BasicSR's ``reduce_loss_dict``):
            with ``world_size > 1``, one ``all_reduce`` of their stacked means, which every rank must
            call. Default: ().
        world_size (int): Number of ranks. Default: 1.

    Returns:
        OrderedDict[str, float]: The entries in the order of ``log``.
    """
    tensor_keys = [key for key, value in log.items() if torch.is_tensor(value)]
    reduced = [key for key in tensor_keys if key in rank_mean_keys]
    kept = [key for key in tensor_keys if key not in rank_mean_keys]
    read = {}
    if tensor_keys:
        means = torch.stack([log[key].detach().mean() for key in reduced + kept])
        if world_size > 1 and reduced:
            rank_means = means[:len(reduced)]  # a view: reduced in place
            torch.distributed.all_reduce(rank_means)
            rank_means /= world_size
        read = dict(zip(reduced + kept, means.tolist()))
    return OrderedDict((key, read[key] if key in read else float(value)) for key, value in log.items())


class DeferredLogMixin:
    """Keeps each step's log on the device and reads it only when ``get_current_log`` is called.

    BasicSR's ``reduce_loss_dict`` reads every loss to the host at every step (each read waits for the
    device), though its training loop reads the log only every ``logger.print_freq`` iterations. A
    step here stores its losses as detached tensors; ``get_current_log`` averages them over the ranks
    (BasicSR's semantics) with one collective and reads the whole log in one transfer. In distributed
    training every rank must call it at the same iterations, as BasicSR's loop does.
    """

    def store_log(self, losses, **extras):
        """Keep this step's ``losses`` (averaged over the ranks when read) and ``extras`` (read as they are).

        Args:
            losses (dict[str, Tensor]): Loss values, kept detached.
            **extras (Tensor | float): Other entries (tensors are kept detached).
        """
        self.log_dict = OrderedDict((key, value.detach() if torch.is_tensor(value) else value)
                                    for key, value in {**losses, **extras}.items())
        self._rank_mean_keys = tuple(losses)

    def get_current_log(self):
        """The last step's log as plain floats (losses averaged over the ranks)."""
        world_size = self.opt['world_size'] if self.opt['dist'] else 1
        return log_to_floats(self.log_dict, getattr(self, '_rank_mean_keys', ()), world_size)
