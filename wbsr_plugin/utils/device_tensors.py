"""Host values onto a device without waiting for it.

``torch.tensor(values, device='cuda')`` (and ``.to('cuda')`` of a CPU tensor) copies from pageable memory, which
waits for everything queued on the device. Staged in pinned memory, the copy is queued like a kernel and the host
goes on planning; PyTorch's pinned-memory cache keeps the buffer until the copy has run.
"""
import torch


def to_device(values, device, dtype=None):
    """``values`` (Python numbers, nested lists, or a CPU tensor) as a tensor on ``device``, copied asynchronously.

    Args:
        values (Sequence | Tensor): What to move.
        device (torch.device | str): Where to.
        dtype (torch.dtype | None): Element type; None: PyTorch's inference (or the tensor's own).

    Returns:
        Tensor: On ``device``; on the CPU, a new tensor (lists) or ``values`` itself.
    """
    device = torch.device(device)
    if torch.is_tensor(values) and values.device.type != 'cpu':
        return values.to(device=device, dtype=dtype)
    host = values.to(dtype=dtype) if torch.is_tensor(values) else torch.tensor(values, dtype=dtype, device='cpu')
    if device.type == 'cpu':
        return host
    if device.type == 'cuda':
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def class_histogram(classes, num_bins):
    """Counts of the values 0..num_bins-1 in ``classes`` (long, any shape), on its device: ``torch.bincount`` reads
    the largest value back to the host on CUDA; a scatter-add into a fixed size does not."""
    flat = classes.reshape(-1)
    counts = torch.zeros(num_bins, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))
