"""Batching images of different sizes: zero-padding at the bottom/right and a padding mask."""

import torch


def collate_detection(samples):
    """samples: list of (image [3, h_i, w_i], target) -> (images [B, 3, H, W], mask [B, H, W] bool
    with True on padding, list of targets), H and W the largest in the batch (no size divisor,
    as in the published recipe). None samples (unreadable images a dataset skips) are left out, so
    B can be smaller than the loader's batch size; the training loop counts the difference. The
    targets' tensors come back as views of one buffer per dtype (share_buffers)."""
    samples = [s for s in samples if s is not None]
    if not samples:
        raise ValueError("every image of this batch is unreadable (skip_bad_images left none)")
    images, targets = zip(*samples)
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    batch = images[0].new_zeros(len(images), 3, height, width)
    mask = torch.ones(len(images), height, width, dtype=torch.bool)
    for image, padded, image_mask in zip(images, batch, mask):
        padded[:, : image.shape[1], : image.shape[2]].copy_(image)
        image_mask[: image.shape[1], : image.shape[2]] = False
    return batch, mask, share_buffers(targets)


def share_buffers(targets):
    """New target dicts whose tensors are views of one contiguous buffer per dtype (the values
    copied, the dicts given left as they were). A loader worker sends each tensor of a batch
    through shared memory on its own, a file descriptor and a mapping apiece: a batch of 8
    synthetic images' boxes, labels and sizes (32 tensors) took 7 ms to receive, against 0.4 ms
    as views of one buffer."""
    packed = [dict(target) for target in targets]
    by_dtype = {}
    for target in packed:
        for key, value in target.items():
            if torch.is_tensor(value):
                by_dtype.setdefault(value.dtype, []).append((target, key, value))
    for entries in by_dtype.values():
        buffer = torch.cat([value.reshape(-1) for _, _, value in entries])
        offset = 0
        for target, key, value in entries:
            target[key] = buffer[offset: offset + value.numel()].view(value.shape)
            offset += value.numel()
    return packed
