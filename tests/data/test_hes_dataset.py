"""ClassBalancedPairedDataset inside BasicSR's data pipeline: phases, switch, workers, ranks, bad input."""
import os
import random
import shutil
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES
from torch.utils.data import DataLoader

from wbsr_plugin.data.class_balanced_paired_dataset import ClassBalancedPairedDataset
from wbsr_plugin.data.difficulty import bgr_image_to_luma, difficulty_classes, patch_difficulty
from wbsr_plugin.data.hes_index import HESIndex
from wbsr_plugin.data.training_progress import (
    publish_training_progress,
    read_training_progress,
    reset_training_progress,
)

from basicsr.data import build_dataset
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.models.base_model import BaseModel
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

NAMES = ['astronaut', 'chelsea', 'coffee', 'rocket']
CHI2_999_DOF9 = 27.88


@pytest.fixture(autouse=True)
def fresh_progress():
    reset_training_progress()
    yield
    reset_training_progress()


@pytest.fixture
def data(tmp_path):
    shutil.copytree(osp.join(FIXTURES, 'hr'), tmp_path / 'hr')
    shutil.copytree(osp.join(FIXTURES, 'lr_x4'), tmp_path / 'lr_x4')
    return tmp_path


def make_opt(root, **extra):
    opt = {
        'name': 'fixtures', 'type': 'ClassBalancedPairedDataset', 'phase': 'train', 'scale': 4,
        'dataroot_gt': str(root / 'hr'), 'dataroot_lq': str(root / 'lr_x4'), 'io_backend': {'type': 'disk'},
        'gt_size': 32, 'use_hflip': False, 'use_rot': False, 'hes_stride': 2
    }
    opt.update(extra)
    return opt


def lmdb_of(folder, lmdb_path):
    names = sorted(os.listdir(folder))
    make_lmdb_from_imgs(str(folder), str(lmdb_path), names, [osp.splitext(n)[0] for n in names])
    return str(lmdb_path)


def patch_class(dataset, lq, expected=None):
    """Class of a returned LR patch; a score within rounding of a threshold may fall either side."""
    img = lq.permute(1, 2, 0).numpy()[..., ::-1]  # RGB CHW -> BGR HWC
    score = patch_difficulty(bgr_image_to_luma(img), lq.shape[-1], [0], [0]).numpy()
    cls = int(difficulty_classes(score, dataset.thresholds)[0, 0])
    if expected is not None and cls != expected:
        if np.isclose(score, dataset.thresholds, rtol=1e-9, atol=1e-9).any():
            return expected
    return cls


def test_off_switch_is_paired_image_dataset(data):
    opt = make_opt(data, hes_enabled=False, use_hflip=True, use_rot=True)
    ours = build_dataset(opt)
    stock_opt = {k: v for k, v in opt.items() if not k.startswith('hes_')}
    stock = PairedImageDataset(dict(stock_opt, io_backend={'type': 'disk'}))
    assert len(ours) == len(stock) == 4
    assert not list(data.glob('*.npz')), 'no index when HES is off'
    for index in range(4):
        random.seed(index)
        a = ours[index]
        random.seed(index)
        b = stock[index]
        assert a.keys() == b.keys()
        assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])


def test_sample_level_is_a_random_crop_and_class_level_draws_from_the_index(data):
    dataset = build_dataset(make_opt(data))
    assert isinstance(dataset, ClassBalancedPairedDataset)
    assert list(data.glob('lr_x4_hes_p8_s2_*.npz')), 'index written beside dataroot_lq'
    random.seed(0)
    item = dataset[1]
    assert item['hes_class'] == -1 and item['lq'].shape == (3, 8, 8) and item['gt'].shape == (3, 32, 32)

    publish_training_progress(70, 100)  # S = 70: the next batch is for iteration 71
    counts = np.zeros(10, int)
    for _ in range(1500):
        item = dataset[0]
        cls = item['hes_class']
        assert patch_class(dataset, item['lq'], cls) == cls
        counts[cls] += 1
    # Eq. 8 from the index's class sizes (delta 0.9 by default), written out here
    sizes = np.bincount(np.searchsorted(dataset.thresholds, HESIndex(dataset.index_path).score, side='right'),
                        minlength=10)
    assert sizes.min() > 0
    weights = 1 / (sizes * 0.9**np.arange(1, 11))
    expected = weights / weights.sum() * counts.sum()
    assert ((counts - expected)**2 / expected).sum() < CHI2_999_DOF9


def crop_position(image, patch):
    """Every (top, left) at which ``patch`` (h, w, c) is an exact crop of ``image``."""
    h, w = patch.shape[:2]
    return [(top, left) for top in range(image.shape[0] - h + 1) for left in range(image.shape[1] - w + 1)
            if np.array_equal(image[top:top + h, left:left + w], patch)]


def test_class_level_gt_crop_is_aligned_with_the_lq_crop(data):
    """Protects the GT crop: exactly ``scale`` times the LQ crop's position, never shifted."""
    dataset = build_dataset(make_opt(data, hes_switch_iter=0))
    for _ in range(20):
        item = dataset[0]
        lq_image = cv2.imread(item['lq_path'])[..., ::-1]  # RGB, as the item's tensors
        gt_image = cv2.imread(item['gt_path'])[..., ::-1]
        lq = np.round(item['lq'].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        gt = np.round(item['gt'].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        positions = crop_position(lq_image, lq)
        assert positions, 'the LQ patch is a crop of its image'
        assert any(np.array_equal(gt_image[4 * top:4 * top + 32, 4 * left:4 * left + 32], gt)
                   for top, left in positions)


def run_loop(dataset, total_iter, num_workers, persistent, sampler_ratio=40, batch_size=2, prefetch_factor=2,
             context=None):
    """train_pipeline's order: fetch the batch, then publish its iteration; returns hes_class per iteration."""
    sampler = EnlargedSampler(dataset, 1, 0, sampler_ratio)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        persistent_workers=persistent, prefetch_factor=prefetch_factor if num_workers else None,
                        multiprocessing_context=context)
    phases, current_iter, epoch = {}, 0, 0
    while current_iter < total_iter:
        sampler.set_epoch(epoch)
        for batch in loader:
            current_iter += 1
            if current_iter > total_iter:
                break
            publish_training_progress(current_iter, total_iter)
            phases[current_iter] = batch['hes_class'].tolist()
        epoch += 1
    return phases


@pytest.mark.parametrize('persistent', [False, True])
def test_switch_with_workers_is_never_early_and_lags_at_most_the_prefetch_depth(data, persistent):
    dataset = build_dataset(make_opt(data, hes_switch_ratio=0.5))
    total, workers, prefetch = 60, 2, 2
    phases = run_loop(dataset, total, workers, persistent, sampler_ratio=10, prefetch_factor=prefetch)
    switch = dataset.switch_iter(total)
    assert switch == 30
    lag = workers * prefetch
    for it, classes in phases.items():
        if it <= switch:
            assert classes == [-1, -1], f'iteration {it} is class-level before the switch'
        elif it > switch + lag:
            assert min(classes) >= 0, f'iteration {it} is still sample-level'
    assert len(phases) == total


def test_spawn_workers_see_the_published_iteration(data):
    dataset = build_dataset(make_opt(data, hes_switch_iter=3))
    phases = run_loop(dataset, 12, 1, True, sampler_ratio=12, prefetch_factor=1, context='spawn')
    assert all(c == [-1, -1] for it, c in phases.items() if it <= 3)
    assert all(min(c) >= 0 for it, c in phases.items() if it > 3 + 1)


class StubModel(BaseModel):

    def __init__(self, total_iter):
        self.opt = {'train': {'total_iter': total_iter}}
        self.optimizers, self.schedulers = [], []


@pytest.mark.parametrize('resume_iter, first_phase', [(80, 'class'), (50, 'sample')])
def test_phase_after_resume(data, resume_iter, first_phase):
    model = StubModel(total_iter=100)
    model.resume_training({'iter': resume_iter, 'optimizers': [], 'schedulers': []})
    assert read_training_progress() == (resume_iter, 100)
    dataset = build_dataset(make_opt(data))  # S = 70
    loader = DataLoader(dataset, batch_size=2, sampler=EnlargedSampler(dataset, 1, 0, 4), num_workers=2)
    first = next(iter(loader))['hes_class']
    assert (first >= 0).all() if first_phase == 'class' else (first == -1).all()
    model.update_learning_rate(resume_iter + 1)
    assert read_training_progress() == (resume_iter + 1, 100)


def test_two_ranks_never_share_a_patch_within_a_step(data):
    torch.manual_seed(0)
    datasets = []
    for rank in range(2):
        dataset = build_dataset(make_opt(data, hes_switch_iter=0))
        dataset.rank, dataset.world_size = rank, 2
        datasets.append(dataset)
    loaders = [
        DataLoader(d, batch_size=4, sampler=EnlargedSampler(d, 2, r, 40), num_workers=0, drop_last=True)
        for r, d in enumerate(datasets)
    ]
    steps = 0
    for batch0, batch1 in zip(*loaders):
        patches = [(p, lq.numpy().tobytes()) for b in (batch0, batch1) for p, lq in zip(b['lq_path'], b['lq'])]
        assert len(set(patches)) == len(patches), f'duplicate patch in step {steps}'
        steps += 1
    assert steps == 20


def test_sample_level_ranks_split_the_images(data):
    dataset = build_dataset(make_opt(data))
    shares = [list(EnlargedSampler(dataset, 2, rank, 1)) for rank in range(2)]
    assert sorted(shares[0] + shares[1]) == [0, 1, 2, 3]


def test_deterministic_under_manual_seed(data):
    dataset = build_dataset(make_opt(data, hes_switch_iter=0))

    def draws(seed):
        torch.manual_seed(seed)
        dataset._drawer = None
        return [(dataset[0]['lq_path'], dataset[0]['lq'].sum().item()) for _ in range(30)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_lmdb_made_by_basicsr_works(data):
    opt = make_opt(data, io_backend={'type': 'lmdb'}, dataroot_gt=lmdb_of(data / 'hr', data / 'hr.lmdb'),
                   dataroot_lq=lmdb_of(data / 'lr_x4', data / 'lr_x4.lmdb'), hes_switch_iter=0)
    dataset = build_dataset(opt)
    item = dataset[0]
    assert item['lq_path'] in NAMES and item['lq'].shape == (3, 8, 8)
    assert patch_class(dataset, item['lq'], item['hes_class']) == item['hes_class']


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_lmdb(data):
    opt = make_opt(data, io_backend={'type': 'lmdb'}, dataroot_gt=str(data / 'nope.lmdb'),
                   dataroot_lq=str(data / 'nope_lq.lmdb'))
    with pytest.raises(FileNotFoundError, match='nope_lq.lmdb'):
        build_dataset(opt)


def test_corrupt_lmdb(data):
    broken = data / 'broken.lmdb'
    broken.mkdir()
    (broken / 'data.mdb').write_bytes(b'not an lmdb at all' * 1000)
    (broken / 'meta_info.txt').write_text('astronaut.png (24,24,3) 1\n')
    opt = make_opt(data, io_backend={'type': 'lmdb'}, dataroot_gt=lmdb_of(data / 'hr', data / 'hr.lmdb'),
                   dataroot_lq=str(broken))
    with pytest.raises(ValueError, match='broken.lmdb.*corrupt'):
        build_dataset(opt)


def test_lmdb_without_meta_info(data):
    gt = lmdb_of(data / 'hr', data / 'hr.lmdb')
    lq = lmdb_of(data / 'lr_x4', data / 'lr_x4.lmdb')
    (data / 'lr_x4.lmdb' / 'meta_info.txt').unlink()
    with pytest.raises(FileNotFoundError, match='lr_x4.lmdb.*meta_info.txt'):
        build_dataset(make_opt(data, io_backend={'type': 'lmdb'}, dataroot_gt=gt, dataroot_lq=lq))


def test_scale_mismatch_names_both_files(data):
    shutil.copytree(osp.join(FIXTURES, 'lr_x3'), data / 'lr_x3')
    with pytest.raises(ValueError, match=r"GT '.*hr/\w+.png' is 96x96.*LQ '.*lr_x3/\w+.png' is 32x32.*scale=4"):
        build_dataset(make_opt(data, dataroot_lq=str(data / 'lr_x3')))


def test_image_smaller_than_gt_size(data):
    with pytest.raises(ValueError, match=r'lr_x4/\w+.png.* is 24x24, smaller than the LR patch 32x32'):
        build_dataset(make_opt(data, gt_size=128))


def test_grayscale_png(data):
    img = cv2.imread(str(data / 'lr_x4' / 'coffee.png'))
    cv2.imwrite(str(data / 'lr_x4' / 'coffee.png'), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    with pytest.raises(ValueError, match='coffee.png.*grayscale'):
        build_dataset(make_opt(data))


def test_16_bit_png(data):
    img = cv2.imread(str(data / 'hr' / 'rocket.png')).astype(np.uint16) * 257
    cv2.imwrite(str(data / 'hr' / 'rocket.png'), img)
    img = cv2.imread(str(data / 'lr_x4' / 'rocket.png')).astype(np.uint16) * 257
    cv2.imwrite(str(data / 'lr_x4' / 'rocket.png'), img)
    with pytest.raises(ValueError, match='rocket.png.*16-bit'):
        build_dataset(make_opt(data))


def test_unknown_hes_key(data):
    with pytest.raises(ValueError, match="hes_detla.*allowed"):
        build_dataset(make_opt(data, hes_detla=0.9))


def test_stale_explicit_index_is_refused_and_default_index_is_rebuilt(data, tmp_path):
    from wbsr_plugin.data.hes_index import build_index
    opt = make_opt(data)
    index_path = str(tmp_path / 'my_index.npz')
    build_index(opt, index_path, stride=2)
    build_dataset(make_opt(data, hes_index_path=index_path))  # matches
    with pytest.raises(ValueError, match='stride'):
        build_dataset(make_opt(data, hes_index_path=index_path, hes_stride=4))

    default = build_dataset(opt).index_path
    img = cv2.imread(str(data / 'lr_x4' / 'chelsea.png'))
    cv2.imwrite(str(data / 'lr_x4' / 'chelsea.png'), 255 - img)
    with pytest.raises(ValueError, match=r"my_index.npz.*no longer matches.*changed"):
        build_dataset(make_opt(data, hes_index_path=index_path))
    before = np.load(default)['score']
    rebuilt = build_dataset(opt)
    assert rebuilt.index_path == default
    assert not np.array_equal(np.load(default)['score'], before)
