"""Training batches grouped by orientation: every image at most once, one orientation per batch
but for the remainders, the batch count of plain batching, per-rank shares, mid-epoch resume."""

import pytest
import torch

from dabdetr.data import CocoDetection
from dabdetr.data.batching import TrainBatchSampler, orientation_batches


def random_flags(count, seed):
    return (torch.rand(count, generator=torch.Generator().manual_seed(seed)) < 0.3).tolist()


@pytest.mark.parametrize("count,batch_size", [(23, 4), (40, 2), (7, 3), (5, 8)])
def test_orientation_batches_hold_one_orientation_but_for_one_batch_of_remainders(count, batch_size):
    portrait = random_flags(count, seed=count)
    indices = torch.randperm(count, generator=torch.Generator().manual_seed(1)).tolist()
    batches = orientation_batches(indices, portrait, batch_size)
    assert len(batches) == count // batch_size
    assert all(len(batch) == batch_size for batch in batches)
    flat = [i for batch in batches for i in batch]
    assert len(set(flat)) == len(flat) and set(flat) <= set(indices)
    # Each orientation leaves fewer than batch_size images over, so their union fills at most one batch.
    mixed = [batch for batch in batches if len({portrait[i] for i in batch}) > 1]
    assert len(mixed) <= 1
    if mixed:
        assert mixed[0] is batches[-1]


def test_orientation_batches_of_one_orientation_are_plain_batches_in_order():
    indices = [5, 2, 9, 0, 7, 1, 3]
    assert orientation_batches(indices, [False] * 10, 3) == [[5, 2, 9], [0, 7, 1]]


def padded_pixels(batches, sizes):
    return sum(len(b) * max(sizes[i][0] for i in b) * max(sizes[i][1] for i in b) for b in batches)


def test_grouped_batches_pad_less_and_split_the_epoch_between_ranks():
    count, batch_size = 64, 4
    portrait = random_flags(count, seed=3)
    sizes = [(640, 480) if p else (480, 640) for p in portrait]
    dataset = list(range(count))
    ranks = [TrainBatchSampler(dataset, batch_size, 2, rank, seed=0, portrait=portrait) for rank in (0, 1)]
    plain = TrainBatchSampler(dataset, batch_size, 1, 0, seed=0)
    for sampler in (*ranks, plain):
        sampler.set_epoch(1)
    shares = [[i for batch in sampler for i in batch] for sampler in ranks]
    assert not set(shares[0]) & set(shares[1]) and len(shares[0]) == len(shares[1]) == count // 2
    assert [len(list(sampler)) for sampler in ranks] == [len(sampler) for sampler in ranks] == [8, 8]
    grouped = list(ranks[0]) + list(ranks[1])
    assert padded_pixels(grouped, sizes) < padded_pixels(list(plain), sizes)
    ranks[0].set_epoch(2)
    assert list(ranks[0]) != grouped[:8]


def test_a_mid_epoch_resume_continues_the_epochs_batches():
    portrait = random_flags(30, seed=4)
    sampler = TrainBatchSampler(list(range(30)), 4, 1, 0, seed=7, portrait=portrait)
    sampler.set_epoch(3)
    whole = list(sampler)
    resumed = TrainBatchSampler(list(range(30)), 4, 1, 0, seed=7, portrait=portrait)
    resumed.set_epoch(3)
    resumed.skip = 3
    assert list(resumed) == whole[3:] and len(resumed) == len(whole) - 3


def test_coco_portrait_flags_come_from_the_annotated_sizes(tmp_path):
    annotations = {"images": [{"id": 1, "width": 640, "height": 480, "file_name": "a.jpg"},
                              {"id": 2, "width": 480, "height": 640, "file_name": "b.jpg"},
                              {"id": 3, "width": 500, "height": 500, "file_name": "c.jpg"},
                              {"id": 4, "file_name": "d.jpg"}],
                   "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    dataset = CocoDetection(annotations, str(tmp_path), transforms=None)  # no image is read
    assert dataset.portrait_flags() == [False, True, False, False]
