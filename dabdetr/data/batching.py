"""Training batches: each process's share of an epoch, shuffled per epoch, in batches of images
of one orientation, so that a batch pads little."""

import torch
from torch.utils.data import DistributedSampler


def orientation_batches(indices, portrait, batch_size):
    """indices, in their order, as batches of batch_size whose images share an orientation
    (portrait[i]: bool). A batch is formed as soon as its orientation has batch_size images; the
    remainders of both orientations, in their order, form the last batches, and an incomplete
    last batch is dropped: there are len(indices) // batch_size batches, as without grouping."""
    batches, filling = [], {False: [], True: []}
    for index in indices:
        group = filling[bool(portrait[index])]
        group.append(index)
        if len(group) == batch_size:
            batches.append(group.copy())
            group.clear()
    left_over = set(filling[False] + filling[True])
    rest = [index for index in indices if index in left_over]
    batches += [rest[start:start + batch_size] for start in range(0, len(rest) - batch_size + 1, batch_size)]
    return batches


class TrainBatchSampler(torch.utils.data.Sampler):
    """The batches of one process for one epoch (call set_epoch first).

    The process's indices are DistributedSampler's (shuffled by seed and epoch, drop_last). With
    portrait flags (one bool per image), a batch holds images of one orientation: a batch that
    mixes a 4:3 landscape photo with a portrait one pads both to a square, a third more pixels
    to compute on (MMDetection's GroupSampler and Detectron2's aspect-ratio grouping do the same).
    The batches depend on the seed and epoch only, so a mid-epoch resume sets `skip`, the batches
    already done, and continues the epoch's own order."""

    def __init__(self, dataset, batch_size, world_size, rank, seed, portrait=None):
        self.sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.portrait = portrait if portrait is not None else [False] * len(dataset)
        self.skip = 0

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return iter(orientation_batches(list(self.sampler), self.portrait, self.batch_size)[self.skip:])

    def __len__(self):
        return len(self.sampler) // self.batch_size - self.skip
