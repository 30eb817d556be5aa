"""BasicSR's RCAN weights in the original RCAN layout (Zhang et al., ECCV 2018), the one spandrel recognises.

BasicSR's ``RCAN`` and the original differ only in names and in where the mean shift lives: BasicSR subtracts
``rgb_mean`` and scales by ``img_range`` in ``forward``; the original (and spandrel's copy) multiplies the input
by 255 and applies two 1x1 convolutions, ``sub_mean`` and ``add_mean``, whose weights are in the state dict.
Writing those two convolutions for BasicSR's ``img_range`` and ``rgb_mean`` makes the network the same:

=========================================  =================================================
BasicSR ``RCAN``                           original RCAN
=========================================  =================================================
``conv_first``                             ``head.0``
``body.G.residual_group.B.rcab.{0,2}``     ``body.G.body.B.body.{0,2}``
``body.G.residual_group.B.rcab.3``         ``body.G.body.B.body.3.conv_du``
``  .attention.{1,3}``                     ``  .{0,2}``
``body.G.conv``                            ``body.G.body.{num_block}``
``conv_after_body``                        ``body.{num_group}``
``upsample.N``                             ``tail.0.N``
``conv_last``                              ``tail.1``
``(x - rgb_mean) * img_range``             ``sub_mean(255 x)``: weight ``img_range / 255``, bias
                                           ``-img_range * rgb_mean``
``y / img_range + rgb_mean``               ``add_mean(y) / 255``: weight ``255 / img_range``, bias
                                           ``255 * rgb_mean``
=========================================  =================================================

The original has no residual scale (spandrel assumes 1) and three colour channels; spandrel reads the attention
reduction as ``num_feat // squeezed channels``, which must give the squeezed channels back.
"""
import re

import torch

ORIGINAL_RANGE = 255.
_RENAMES = (
    (r'^conv_first\.', 'head.0.'),
    (r'^body\.(\d+)\.residual_group\.(\d+)\.rcab\.([02])\.', r'body.\1.body.\2.body.\3.'),
    (r'^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.1\.', r'body.\1.body.\2.body.3.conv_du.0.'),
    (r'^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.3\.', r'body.\1.body.\2.body.3.conv_du.2.'),
    (r'^upsample\.', 'tail.0.'),
    (r'^conv_last\.', 'tail.1.'),
)


def original_layout_problems(options):
    """Why the RCAN of BasicSR options ``options`` has no original-layout twin: a list of reasons, empty if it has.

    Args:
        options (dict): ``RCAN`` options: ``num_in_ch``, ``num_out_ch``, ``num_feat``, ``squeeze_factor``,
            ``res_scale`` (missing ones take BasicSR's defaults).
    """
    problems = []
    if (options.get('num_in_ch', 3), options.get('num_out_ch', 3)) != (3, 3):
        problems.append('the original RCAN takes and gives 3 channels')
    if options.get('res_scale', 1) != 1:
        problems.append(f"res_scale is {options['res_scale']}, and spandrel's RCAN has none")
    num_feat = options.get('num_feat', 64)
    squeezed = num_feat // options.get('squeeze_factor', 16)
    if squeezed < 1 or num_feat // (num_feat // squeezed) != squeezed:
        problems.append(f'num_feat {num_feat} // {squeezed} attention channels does not give the reduction back')
    return problems


def original_key(key, num_group, num_block):
    """The original RCAN's name of BasicSR RCAN state dict key ``key``."""
    group_conv = re.match(r'^body\.(\d+)\.conv\.(weight|bias)$', key)
    if group_conv:
        return f'body.{group_conv[1]}.body.{num_block}.{group_conv[2]}'
    if key.startswith('conv_after_body.'):
        return f'body.{num_group}.' + key[len('conv_after_body.'):]
    for pattern, replacement in _RENAMES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    raise ValueError(f'{key!r} is not a key of BasicSR RCAN.')


def original_layout(state, options):
    """The state dict of BasicSR RCAN ``state`` in the original RCAN layout, with ``sub_mean`` and ``add_mean``.

    Args:
        state (dict[str, Tensor]): ``RCAN`` weights (strict keys).
        options (dict): The ``RCAN`` options that built it (``num_group``, ``num_block``, ``img_range``,
            ``rgb_mean``; missing ones take BasicSR's defaults).

    Returns:
        dict[str, Tensor]: Float32 CPU tensors under the original names.
    """
    problems = original_layout_problems(options)
    if problems:
        raise ValueError('this RCAN has no original-layout twin: ' + '; '.join(problems) + '.')
    num_group, num_block = options.get('num_group', 10), options.get('num_block', 20)
    img_range = float(options.get('img_range', 255.))
    mean = torch.tensor(options.get('rgb_mean', (0.4488, 0.4371, 0.4040)), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    out = {original_key(k, num_group, num_block): v.detach().to('cpu', torch.float32).contiguous()
           for k, v in state.items()}
    out['sub_mean.weight'] = (eye * img_range / ORIGINAL_RANGE).float()
    out['sub_mean.bias'] = (-img_range * mean).float()
    out['add_mean.weight'] = (eye * ORIGINAL_RANGE / img_range).float()
    out['add_mean.bias'] = (ORIGINAL_RANGE * mean).float()
    return out
