"""Batch augmentation: per-sample draws, uint8 in and out, ops as torchvision defines them."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from trainables.data.augment import augment, random_crop, random_flip
from trainables.data.autoaugment import OPS, RAND, TRIVIAL_WIDE, apply_ops, rand_augment

torch.manual_seed(0)
IMAGES = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)


def one(name: str, level: float, sign: float = 1.0, ranges=RAND) -> torch.Tensor:
    b = len(IMAGES)
    return apply_ops(IMAGES, torch.full((b,), OPS.index(name)), torch.full((b,), level),
                     torch.full((b,), sign), ranges)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("brightness", lambda x: TF.adjust_brightness(x, 1 + 0.5 * RAND.enhance)),
        ("color", lambda x: TF.adjust_saturation(x, 1 + 0.5 * RAND.enhance)),
        ("contrast", lambda x: TF.adjust_contrast(x, 1 + 0.5 * RAND.enhance)),
        ("sharpness", lambda x: TF.adjust_sharpness(x, 1 + 0.5 * RAND.enhance)),
        ("posterize", lambda x: TF.posterize(x, 6)),
        ("solarize", lambda x: TF.solarize(x, 127.5)),
        ("autocontrast", TF.autocontrast),
        ("equalize", TF.equalize),
        ("identity", lambda x: x),
    ],
)
def test_colour_operations_match_torchvision(name, reference):
    got = one(name, 0.5)
    want = reference(IMAGES)
    assert got.dtype == torch.uint8 and got.shape == IMAGES.shape
    assert (got.int() - want.int()).abs().max() <= 1


def test_geometric_operations_move_pixels_and_level_zero_is_identity():
    for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        assert torch.equal(one(name, 0.0), IMAGES)
        assert not torch.equal(one(name, 1.0, ranges=TRIVIAL_WIDE), IMAGES)
    shifted = one("translate_x", 0.25 / RAND.translate)  # a quarter of the side: 4 px
    assert torch.equal(shifted[..., 4:], IMAGES[..., :-4]) or torch.equal(
        shifted[..., :-4], IMAGES[..., 4:])


def test_each_sample_draws_its_own_operation():
    same = IMAGES[:1].expand(64, -1, -1, -1).contiguous()
    for policy in ("flip", "crop_flip", "trivialaugment"):
        out = augment(same, policy)
        distinct = {img.numpy().tobytes() for img in out}
        assert len(distinct) > 1, policy
    out = rand_augment(same, magnitude=9)
    assert len({img.numpy().tobytes() for img in out}) > 8
    assert augment(same, "none") is same


def test_flip_and_crop_keep_shape_dtype_and_pixels():
    flipped = random_flip(IMAGES)
    for a, b in zip(flipped, IMAGES, strict=True):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    cropped = random_crop(IMAGES, padding=2)
    assert cropped.shape == IMAGES.shape and cropped.dtype == torch.uint8


def test_randaugment_magnitude_is_checked():
    with pytest.raises(ValueError, match="magnitude"):
        rand_augment(IMAGES, magnitude=31)


@pytest.mark.parametrize("ranges", [RAND, TRIVIAL_WIDE])
@pytest.mark.parametrize("size", [16, 33])
def test_a_gpus_whole_batch_selection_gives_the_cpus_sub_batch_images(ranges, size):
    """On a GPU every operation runs on the whole batch and each sample keeps its own
    operation's result (no host sync); on a CPU it runs on the sub-batch that drew it. Same
    images, sample for sample, for any draw of operations, levels and signs."""
    from trainables.data.autoaugment import on_sub_batch, on_whole_batch

    generator = torch.Generator().manual_seed(size)
    for _ in range(20):
        x = torch.randint(0, 256, (24, 3, size, size), dtype=torch.uint8, generator=generator)
        x[0] = 77  # a flat image: autocontrast and equalize leave it as it is
        op = torch.randint(0, len(OPS), (24,), generator=generator)
        level = torch.rand(24, generator=generator)
        sign = torch.where(torch.rand(24, generator=generator) < 0.5, -1.0, 1.0)
        whole = apply_ops(x, op, level, sign, ranges, select=on_whole_batch)
        assert torch.equal(whole, apply_ops(x, op, level, sign, ranges, select=on_sub_batch))


@pytest.mark.gpu
@pytest.mark.parametrize("policy", ["flip", "crop_flip", "trivialaugment", "randaugment"])
def test_augmentation_issues_no_host_sync_on_a_gpu(policy):
    x = torch.randint(0, 256, (128, 3, 64, 64), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = augment(x, policy, magnitude=9)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.is_cuda


@pytest.mark.gpu
def test_the_pretext_tasks_lab_conversion_issues_no_host_sync_on_a_gpu():
    from trainables.lab import lab_inputs, lab_to_rgb

    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    lab_inputs(x)  # the constants go to the GPU once, on first use
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        grey, ab = lab_inputs(random_flip(x))
        rgb = lab_to_rgb(torch.cat([(grey[:, :1] + 1) * 50, ab * 110], 1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert rgb.shape == x.shape and rgb.is_cuda
