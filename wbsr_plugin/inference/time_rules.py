"""Never slower than the plain network: the plan that runs, chosen by predicted time (a :class:`CostTable`).

The candidates are the FLOPs plan (tiled, or a whole-image subnet), the full network on the whole image and
the full network tiled (the fastest of those two is the fastest plain execution), and each whole-image subnet:

* Eq. 15, Eq. 16 and FLOPs budgets: a plan predicted slower than the fastest plain execution does not run.
  The fastest plain execution runs instead; under a FLOPs budget, the largest whole-image subnet within the
  budget that is predicted faster than it, when there is one.
* An explicit subnet runs tiled or whole, whichever is predicted faster.

Times are those of the subnet forwards (``CostTable``); the engine's own work (difficulty, gathering,
stitching) is not predicted.
"""
import dataclasses

import torch


def _tiled_full(plan, num_subnets, flops):
    """``plan`` with every patch through the full network."""
    count, p = sum(plan.histogram), plan.patch_size
    return dataclasses.replace(plan, subnets=torch.full_like(plan.subnets, num_subnets - 1),
                               histogram=[0] * (num_subnets - 1) + [count], whole_image_subnet=None,
                               tiled_flops=count * flops(p, p, num_subnets - 1))


def predicted_seconds(plan, cost, batch_size):
    """Predicted seconds of the forwards of ``plan`` (tiled, or its whole-image subnet)."""
    if plan.whole_image_subnet is not None:
        return cost.whole_seconds(plan.whole_image_subnet, *plan.lq_size)
    return cost.tiled_seconds(plan.histogram, plan.patch_size, batch_size)


def by_time(plan, cost, *, num_subnets, subnet, budget, flops, batch_size):
    """The plan to run instead of ``plan`` (the FLOPs plan), with ``predicted_s`` and ``reason`` set.

    Args:
        plan (InferencePlan): The plan by FLOPs (:class:`~.planning.Planner`).
        cost (CostTable): Measured costs on the device the engine runs on.
        num_subnets (int): M.
        subnet (int | None): The engine's explicit subnet.
        budget (float | None): The engine's FLOPs budget.
        flops (Callable[[int, int, int], int]): ``flops(h, w, s)``.
        batch_size (int): Patches per forward call.
    """
    h, w = plan.lq_size
    full = num_subnets - 1
    whole = dataclasses.replace(plan, whole_image_subnet=full)
    if subnet is not None:
        tiled = dataclasses.replace(plan, whole_image_subnet=None)
        as_whole = dataclasses.replace(plan, whole_image_subnet=subnet)
        t_tiled, t_whole = predicted_seconds(tiled, cost, batch_size), predicted_seconds(as_whole, cost, batch_size)
        if t_whole < t_tiled:
            return dataclasses.replace(as_whole, predicted_s=t_whole, reason='subnet: whole image predicted faster')
        return dataclasses.replace(tiled, predicted_s=t_tiled, reason='subnet: tiled predicted faster')
    tiled_full = _tiled_full(plan, num_subnets, flops)
    plain = min((predicted_seconds(whole, cost, batch_size), 'full network on the whole image', whole),
                (predicted_seconds(tiled_full, cost, batch_size), 'full network tiled', tiled_full),
                key=lambda option: option[0])
    own = predicted_seconds(plan, cost, batch_size)
    if own <= plain[0]:
        return dataclasses.replace(plan, predicted_s=own, reason='plan predicted faster than the plain network')
    if budget is not None:
        allowed = budget * flops(h, w, full)
        faster = [m for m in range(num_subnets)
                  if flops(h, w, m) <= allowed and cost.whole_seconds(m, h, w) < plain[0]]
        if faster:
            m = faster[-1]
            return dataclasses.replace(plan, whole_image_subnet=m, predicted_s=cost.whole_seconds(m, h, w),
                                       reason='whole-image subnet within the budget predicted faster than the plan '
                                       'and the plain network')
    return dataclasses.replace(plain[2], predicted_s=plain[0],
                               reason=f'{plain[1]}: the plan was predicted slower ({own:.3g} s > {plain[0]:.3g} s)')
