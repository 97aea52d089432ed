"""Box ops, the Hungarian matcher and the criterion against independent computations."""

import itertools
import math

import pytest
import torch

from dabdetr import box_ops
from dabdetr.models.denoising import GROUP_LENGTH_MULTIPLE, noised_queries
from dabdetr.training.criterion import SetCriterion, sigmoid_focal_loss
from dabdetr.training.matcher import HungarianMatcher


def random_cxcywh(n, generator):
    centre = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def iou_giou_by_hand(a, b):
    """IoU and GIoU of two xyxy boxes (python floats), straight from the definitions."""
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (hull - union) / hull


def focal_by_hand(logit, target, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-logit))
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_box_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    boxes = random_cxcywh(20, g)
    xyxy = box_ops.box_cxcywh_to_xyxy(boxes)
    torch.testing.assert_close(xyxy[:, 2] - xyxy[:, 0], boxes[:, 2])
    torch.testing.assert_close((xyxy[:, 1] + xyxy[:, 3]) / 2, boxes[:, 1])
    torch.testing.assert_close(box_ops.box_xyxy_to_cxcywh(xyxy), boxes)
    torch.testing.assert_close(box_ops.box_xywh_to_xyxy(box_ops.box_xyxy_to_xywh(xyxy)), xyxy)


def test_iou_and_giou_match_the_definitions():
    g = torch.Generator().manual_seed(1)
    a = box_ops.box_cxcywh_to_xyxy(random_cxcywh(6, g))
    b = box_ops.box_cxcywh_to_xyxy(random_cxcywh(5, g))
    b[0] = a[0]  # identical boxes: IoU = GIoU = 1
    b[1] = torch.tensor([0.95, 0.95, 0.99, 0.99], dtype=torch.float64)  # disjoint from most: GIoU < 0
    iou, _ = box_ops.box_iou(a, b)
    giou = box_ops.generalized_box_iou(a, b)
    for i, j in itertools.product(range(6), range(5)):
        expected_iou, expected_giou = iou_giou_by_hand(a[i].tolist(), b[j].tolist())
        assert iou[i, j].item() == pytest.approx(expected_iou, abs=1e-12)
        assert giou[i, j].item() == pytest.approx(expected_giou, abs=1e-12)
    assert giou[0, 0].item() == pytest.approx(1.0)
    assert (giou[:, 1] < 0).any()


def test_giou_rejects_degenerate_boxes():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor([[0.5, 0.5, 0.2, 0.9]])
    with pytest.raises(ValueError, match="boxes2 has degenerate boxes"):
        box_ops.generalized_box_iou(good, bad)


def cost_by_hand(logits, boxes, label, gt_box):
    """The matcher's cost of one (prediction, target) pair, as docs/training.md states it, in python floats."""
    p = 1 / (1 + math.exp(-logits[label]))
    focal = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p**2 * -math.log(1 - p + 1e-8)
    l1 = sum(abs(x - y) for x, y in zip(boxes, gt_box))
    to_xyxy = lambda b: [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]  # noqa: E731
    _, giou = iou_giou_by_hand(to_xyxy(boxes), to_xyxy(gt_box))
    return 5 * l1 + 2 * focal - 2 * giou


@pytest.mark.parametrize("seed", range(4))
def test_matcher_finds_the_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    num_queries, num_classes, sizes = 5, 4, [3, 0, 5, 1]
    logits = torch.randn(len(sizes), num_queries, num_classes, generator=g)
    boxes = torch.stack([random_cxcywh(num_queries, g) for _ in sizes]).float()
    targets = [{"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": random_cxcywh(n, g).float()}
               for n in sizes]
    indices = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)
    for b, (target, (query_index, target_index)) in enumerate(zip(targets, indices)):
        n = len(target["labels"])
        assert len(query_index) == len(target_index) == min(n, num_queries)
        assert sorted(target_index.tolist()) == list(range(n))
        cost = [[cost_by_hand(logits[b, q].tolist(), boxes[b, q].tolist(), int(target["labels"][t]),
                              target["boxes"][t].tolist()) for t in range(n)] for q in range(num_queries)]
        best = min((sum(cost[q][t] for t, q in enumerate(queries)) for queries in
                    itertools.permutations(range(num_queries), n)), default=0.0)
        found = sum(cost[q][t] for q, t in zip(query_index.tolist(), target_index.tolist()))
        assert found == pytest.approx(best, abs=1e-4)


def test_matcher_rejects_non_finite_predictions():
    logits = torch.zeros(1, 3, 2)
    logits[0, 1, 0] = float("nan")
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(FloatingPointError, match="non-finite"):
        HungarianMatcher()({"pred_logits": logits, "pred_boxes": torch.full((1, 3, 4), 0.3)}, targets)


def test_focal_loss_matches_the_formula():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(40, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(40, generator=g) < 0.3).double()
    loss = sigmoid_focal_loss(logits, targets)
    expected = [focal_by_hand(x, int(t)) for x, t in zip(logits.tolist(), targets.tolist())]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


class FixedMatcher:
    """Matches query i to target i (so the test knows the pairs)."""

    def __call__(self, outputs, targets):
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]


def test_criterion_losses_match_independent_sums():
    g = torch.Generator().manual_seed(3)
    num_queries, num_classes, sizes = 6, 3, [2, 4]
    logits = torch.randn(2, num_queries, num_classes, generator=g, dtype=torch.float64)
    boxes = torch.stack([random_cxcywh(num_queries, g) for _ in sizes])
    targets = [{"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": random_cxcywh(n, g)}
               for n in sizes]
    outputs = {"pred_logits": logits, "pred_boxes": boxes,
               "aux_outputs": [{"pred_logits": logits * 0.5, "pred_boxes": boxes}]}
    losses = SetCriterion(num_classes, FixedMatcher())(outputs, targets)

    num_boxes = sum(sizes)
    ce = l1 = giou_loss = 0.0
    to_xyxy = lambda b: [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]  # noqa: E731
    for b, target in enumerate(targets):
        for q in range(num_queries):
            for k in range(num_classes):
                matched = q < len(target["labels"]) and int(target["labels"][q]) == k
                ce += focal_by_hand(logits[b, q, k].item(), int(matched))
        for t in range(len(target["labels"])):
            l1 += sum(abs(x - y) for x, y in zip(boxes[b, t].tolist(), target["boxes"][t].tolist()))
            giou_loss += 1 - iou_giou_by_hand(to_xyxy(boxes[b, t].tolist()), to_xyxy(target["boxes"][t].tolist()))[1]
    # float64 outputs keep float64 losses (the criterion widens 16-bit outputs only).
    assert losses["loss"].dtype == torch.float64
    assert losses["loss_ce"].item() == pytest.approx(ce / num_boxes, rel=1e-12)
    assert losses["loss_bbox"].item() == pytest.approx(l1 / num_boxes, rel=1e-12)
    assert losses["loss_giou"].item() == pytest.approx(giou_loss / num_boxes, rel=1e-12)
    # The auxiliary layer has its own copies, and the total weighs ce 1, L1 5, GIoU 2 for every layer.
    assert set(losses) == {"loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"}
    assert losses["loss_bbox_0"].item() == pytest.approx(losses["loss_bbox"].item())
    assert losses["loss_ce_0"].item() != pytest.approx(losses["loss_ce"].item())
    expected_total = sum(losses[f"loss_ce{s}"] + 5 * losses[f"loss_bbox{s}"] + 2 * losses[f"loss_giou{s}"]
                         for s in ("", "_0"))
    assert losses["loss"].item() == pytest.approx(expected_total.item(), rel=1e-12)


def test_criterion_with_no_objects_and_bad_labels():
    outputs = {"pred_logits": torch.zeros(1, 4, 3), "pred_boxes": torch.full((1, 4, 4), 0.5)}
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = SetCriterion(3, HungarianMatcher(), aux_loss=False)(outputs, empty)
    # Every logit is a negative: 12 times focal(0, target 0), divided by num_boxes clamped to 1.
    assert losses["loss_ce"].item() == pytest.approx(12 * focal_by_hand(0.0, 0), rel=1e-6)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    bad = [{"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}]
    with pytest.raises(ValueError, match="target label 3 >= num_classes 3"):
        SetCriterion(3, HungarianMatcher())(outputs, bad)


def test_noised_queries_stay_within_the_noise_bounds():
    g = torch.Generator().manual_seed(4)
    targets = [{"labels": torch.randint(0, 5, (n,), generator=g), "boxes": random_cxcywh(n, g).float()}
               for n in (3, 0, 6)]
    labels, boxes, padding = noised_queries(targets, 4, 5, label_noise=0.0, box_noise=0.0, generator=g)
    # Each group padded to 8 (GROUP_LENGTH_MULTIPLE): 6 objects at most.
    assert labels.shape == (12, 8) and boxes.shape == (12, 8, 4)
    assert padding.tolist() == [[i >= n for i in range(8)] for n in (3, 0, 6) for _ in range(4)]
    for row, (n, target) in enumerate((len(t["labels"]), t) for t in targets for _ in range(4)):
        torch.testing.assert_close(boxes[row, :n], target["boxes"])  # no noise: exact copies
        assert labels[row, :n].tolist() == target["labels"].tolist()

    big = [{"labels": torch.zeros(2000, dtype=torch.int64), "boxes": random_cxcywh(2000, g).float()}]
    labels, boxes, _ = noised_queries(big, 1, 10, label_noise=0.2, box_noise=0.4, generator=g)
    flipped = (labels != 0).float().mean().item()  # a flip draws any of 10 classes: 0.2 * 0.9 change
    assert abs(flipped - 0.18) < 0.03
    original = box_ops.box_cxcywh_to_xyxy(big[0]["boxes"])
    moved = box_ops.box_cxcywh_to_xyxy(boxes[0])
    bound = 0.4 * big[0]["boxes"][:, 2:].repeat(1, 2) / 2 + 1e-6
    assert ((moved - original).abs() <= bound).all() and (moved >= -1e-6).all() and (moved <= 1 + 1e-6).all()
    assert (moved - original).abs().max() > 0.5 * bound.max()


def test_denoising_losses_match_independent_sums():
    g = torch.Generator().manual_seed(5)
    groups, num_classes, sizes = 2, 3, [2, 1]
    targets = [{"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": random_cxcywh(n, g)}
               for n in sizes]
    length = GROUP_LENGTH_MULTIPLE  # 2 objects at most, padded
    logits = torch.randn(len(sizes) * groups, length, num_classes, generator=g, dtype=torch.float64)
    boxes = random_cxcywh(len(sizes) * groups * length, g).view(-1, length, 4)
    dn = {"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": [], "groups": groups}
    outputs = {"pred_logits": torch.zeros(2, 4, num_classes, dtype=torch.float64),
               "pred_boxes": torch.full((2, 4, 4), 0.5, dtype=torch.float64), "dn_outputs": dn}
    losses = SetCriterion(num_classes, HungarianMatcher())(outputs, targets)

    to_xyxy = lambda b: [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]  # noqa: E731
    ce = l1 = giou_loss = 0.0
    for row in range(len(sizes) * groups):
        target = targets[row // groups]  # image-major, group-minor
        for j in range(len(target["labels"])):  # the padding queries do not count
            for k in range(num_classes):
                ce += focal_by_hand(logits[row, j, k].item(), int(int(target["labels"][j]) == k))
            l1 += sum(abs(x - y) for x, y in zip(boxes[row, j].tolist(), target["boxes"][j].tolist()))
            giou_loss += 1 - iou_giou_by_hand(to_xyxy(boxes[row, j].tolist()), to_xyxy(target["boxes"][j].tolist()))[1]
    normalizer = sum(sizes) * groups
    assert losses["loss_ce_dn"].item() == pytest.approx(ce / normalizer, rel=1e-12)
    assert losses["loss_bbox_dn"].item() == pytest.approx(l1 / normalizer, rel=1e-12)
    assert losses["loss_giou_dn"].item() == pytest.approx(giou_loss / normalizer, rel=1e-12)
    weighted = [losses[f"loss_ce{s}"] + 5 * losses[f"loss_bbox{s}"] + 2 * losses[f"loss_giou{s}"] for s in ("", "_dn")]
    assert losses["loss"].item() == pytest.approx(sum(weighted).item(), rel=1e-12)


def test_criterion_widens_16_bit_outputs_to_float32():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 3, generator=g).bfloat16()
    boxes = torch.stack([random_cxcywh(5, g) for _ in range(2)]).float().bfloat16()
    targets = [{"labels": torch.tensor([0, 2]), "boxes": random_cxcywh(2, g).float()},
               {"labels": torch.tensor([1]), "boxes": random_cxcywh(1, g).float()}]
    criterion = SetCriterion(3, FixedMatcher(), aux_loss=False)
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
    widened = criterion({"pred_logits": logits.float(), "pred_boxes": boxes.float()}, targets)
    assert all(losses[k].dtype == torch.float32 for k in losses)
    assert all(losses[k].item() == widened[k].item() for k in losses)  # the same float32 arithmetic
