"""What a folder run did, counted per process (per rank under torchrun), and its summary line."""
from dataclasses import dataclass, field


@dataclass
class RankTotals:
    """What one rank did.

    Attributes:
        rank (int): Global rank.
        images (int): Images written.
        failed (list[str]): Inputs that could not be read, run or written.
        taken (list[str]): Inputs not written because another process wrote one of their files meanwhile.
        kept (list[str]): The same under ``--skip-existing``, which keeps such files (skipped, not failed).
        flops (int): FLOPs spent.
        full_flops (int): FLOPs of the full network on the same images.
        engine_s (float): Seconds inside the inference engine.
        wall_s (float): Seconds from the first file to the last (reading and writing included).
        error (str | None): The exception that stopped the rank early, if any.
    """
    rank: int = 0
    images: int = 0
    failed: list = field(default_factory=list)
    taken: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    flops: int = 0
    full_flops: int = 0
    engine_s: float = 0.
    wall_s: float = 0.
    error: str = None

    def add(self, report):
        """Count one image's report (the engine's: ``flops``, ``full_flops``, ``time_s``)."""
        self.images += 1
        self.flops += report.flops
        self.full_flops += report.full_flops
        self.engine_s += report.time_s


def totals_summary(totals, skipped=0):
    """One line over all ranks: images written (per rank when several), skipped, failed, not written because
    another process wrote their files meanwhile (when any), FLOPs and time.

    Args:
        totals (list[RankTotals]): One per rank.
        skipped (int): Inputs skipped because their output existed when the run started. Default: 0.
    """
    images = sum(t.images for t in totals)
    skipped += sum(len(t.kept) for t in totals)
    failed = sum(len(t.failed) for t in totals)
    taken = sum(len(t.taken) for t in totals)
    conflicts = f', {taken} not written (their files appeared meanwhile)' if taken else ''
    flops = sum(t.flops for t in totals)
    full = sum(t.full_flops for t in totals)
    per_rank = f" ({', '.join(f'rank {t.rank}: {t.images}' for t in totals)})" if len(totals) > 1 else ''
    ratio = f' ({100 * flops / full:.1f}% of full)' if full else ''
    return (f'total: {images} image(s){per_rank}, {skipped} skipped, {failed} failed{conflicts} | '
            f'{flops / 1e9:.1f} GFLOPs'
            f'{ratio} | {max(t.wall_s for t in totals):.2f} s wall, {sum(t.engine_s for t in totals):.2f} s in '
            f'the engine')
