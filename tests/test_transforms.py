"""Crop-reporting augmentation: box statistics, determinism, pixels vs. reported box, workers."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from scl_hf.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform, sample_crop_box
from scl_hf.views import TrainViews, stack_batch

WIDTH, HEIGHT = 256, 192


def gradient_image(width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """Red = column index, green = row index, blue = 255 on the left half and 0 on the right half."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    blue = np.where(xs < width // 2, 255, 0)
    return Image.fromarray(np.stack([xs, ys, blue], axis=-1).astype(np.uint8), "RGB")


def to_pixels(tensor: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Undo the normalisation: (3, h, w) tensor → (h, w, 3) values on the 0..255 scale."""
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return ((tensor * std_t + mean_t) * 255).permute(1, 2, 0).double().numpy()


# ----------------------------------------------------------------------------- sample_crop_box


@pytest.mark.parametrize("size", [(200, 200), (320, 180), (150, 260)])
def test_crop_boxes_respect_scale_and_ratio(size):
    width, height = size
    scale, ratio = (0.25, 1.0), (3 / 4, 4 / 3)
    flips = []
    for index in range(150):
        box = sample_crop_box(np.random.default_rng([7, index]), width, height, scale, ratio)
        flips.append(box.flip)
        assert 0 <= box.x0 < box.x1 <= 1 and 0 <= box.y0 < box.y1 <= 1
        # whole pixels of the original image
        left, top, right, bottom = box.x0 * width, box.y0 * height, box.x1 * width, box.y1 * height
        for value in (left, top, right, bottom):
            assert abs(value - round(value)) < 1e-6
        w, h = round(right - left), round(bottom - top)
        # w and h are the rounded sqrt(area·aspect), sqrt(area/aspect): undo the rounding by ±0.5
        lo_area, hi_area = (w - 0.5) * (h - 0.5), (w + 0.5) * (h + 0.5)
        assert lo_area <= scale[1] * width * height and hi_area >= scale[0] * width * height, (w, h)
        lo_aspect, hi_aspect = (w - 0.5) / (h + 0.5), (w + 0.5) / (h - 0.5)
        assert lo_aspect <= ratio[1] and hi_aspect >= ratio[0], (w, h)
    assert 40 < sum(flips) < 110  # flip_prob 0.5


def test_crop_box_fallback_is_centred_and_clamped_to_the_ratio():
    # a very wide image with a large minimum scale: no attempt fits, torchvision's centre-crop fallback
    box = sample_crop_box(
        np.random.default_rng(0), 400, 50, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3), flip_prob=0.0
    )
    w = round(50 * 4 / 3)
    assert (box.x0, box.x1) == ((400 - w) // 2 / 400, ((400 - w) // 2 + w) / 400)
    assert (box.y0, box.y1) == (0.0, 1.0) and not box.flip


def test_flip_prob_extremes():
    for index in range(20):
        assert not sample_crop_box(np.random.default_rng(index), 64, 64, flip_prob=0.0).flip
        assert sample_crop_box(np.random.default_rng(index), 64, 64, flip_prob=1.0).flip


# ----------------------------------------------------------------------------- TrainTransform


def test_train_transform_is_a_function_of_seed_epoch_index():
    image = gradient_image()
    transform = TrainTransform(32, seed=11)
    pixels, box = transform(image, epoch=2, index=5)
    again, same_box = TrainTransform(32, seed=11)(image, epoch=2, index=5)
    assert box == same_box and torch.equal(pixels, again)
    others = [
        transform(image, epoch=3, index=5),
        transform(image, epoch=2, index=6),
        TrainTransform(32, seed=12)(image, epoch=2, index=5),
    ]
    for other_pixels, other_box in others:
        assert other_box != box and not torch.equal(other_pixels, pixels)
    # the draws do not depend on the order in which rows are transformed
    boxes_forward = [transform.box_for(WIDTH, HEIGHT, 0, i) for i in range(10)]
    boxes_backward = [transform.box_for(WIDTH, HEIGHT, 0, i) for i in reversed(range(10))][::-1]
    assert boxes_forward == boxes_backward
    assert len(set(boxes_forward)) == 10


def test_view_pixels_are_the_crop_at_the_reported_box():
    image, size = gradient_image(), 32
    transform = TrainTransform(size, seed=3)
    seen_flips = set()
    for index in range(12):
        tensor, box = transform(image, epoch=0, index=index)
        assert tensor.shape == (3, size, size) and tensor.dtype == torch.float32
        seen_flips.add(box.flip)
        view = to_pixels(tensor)
        left, top = box.x0 * WIDTH, box.y0 * HEIGHT
        step_x, step_y = (box.x1 - box.x0) * WIDTH / size, (box.y1 - box.y0) * HEIGHT / size
        # source pixel position of each output column/row centre (pixel k is centred at k + 0.5)
        src_x = left + (np.arange(size) + 0.5) * step_x - 0.5
        src_y = top + (np.arange(size) + 0.5) * step_y - 0.5
        if box.flip:
            src_x = src_x[::-1]
        # a resize of a linear ramp is the ramp, wherever the resampling filter stays inside the image
        support_x, support_y = max(step_x, 1.0) + 1, max(step_y, 1.0) + 1
        ok_x = (src_x - support_x >= 0) & (src_x + support_x <= WIDTH - 1)
        ok_y = (src_y - support_y >= 0) & (src_y + support_y <= HEIGHT - 1)
        assert ok_x.sum() > size // 2 and ok_y.sum() > size // 2
        red = view[..., 0][np.ix_(ok_y, ok_x)]
        green = view[..., 1][np.ix_(ok_y, ok_x)]
        np.testing.assert_allclose(red, np.broadcast_to(src_x[ok_x], red.shape), atol=1.01)
        np.testing.assert_allclose(green, np.broadcast_to(src_y[ok_y][:, None], green.shape), atol=1.01)
        # blue: the left half of the original image is 255, its right half 0
        blue = view[..., 2]
        far_left = src_x < WIDTH / 2 - step_x - 1
        far_right = src_x > WIDTH / 2 + step_x
        np.testing.assert_allclose(blue[:, far_left], 255, atol=1.01)
        np.testing.assert_allclose(blue[:, far_right], 0, atol=1.01)
    assert seen_flips == {False, True}


def test_train_transform_custom_normalisation_and_grey_input():
    grey = Image.fromarray(np.full((40, 50), 102, dtype=np.uint8), "L")
    tensor, _ = TrainTransform(16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))(grey, epoch=0, index=0)
    expected = torch.tensor([(0.4 - 0.5) / 0.25, (0.4 - 0.5) / 0.5, (0.4 - 0.5) / 1.0]).view(3, 1, 1)
    torch.testing.assert_close(tensor, expected.expand(3, 16, 16), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- EvalTransform


def test_eval_transform_shape_and_normalisation():
    array = np.zeros((30, 60, 3), dtype=np.uint8)
    array[..., 0], array[..., 1], array[..., 2] = 255, 0, 51
    out = EvalTransform(24)(Image.fromarray(array, "RGB"))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        torch.testing.assert_close(out[channel], torch.full((24, 24), value), atol=1e-5, rtol=0)
    # the whole image, squashed: left and right halves stay left and right
    out = EvalTransform(16, mean=(0, 0, 0), std=(1, 1, 1))(gradient_image())
    assert out[2, :, :6].gt(0.99).all() and out[2, :, -6:].lt(0.01).all()
    assert math.isclose(out[0, 0, 0].item() * 255, (0.5 * WIDTH / 16) - 0.5, abs_tol=2.0)
    assert math.isclose(out[0, 0, -1].item() * 255, WIDTH - 0.5 * WIDTH / 16 - 0.5, abs_tol=2.0)


# ----------------------------------------------------------------------------- dataloader workers


def tiny_dataset(count: int = 6):
    import datasets

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8), "RGB")
        for i in range(count)
    ]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict(
        {"image": images, "label": [i % 3 for i in range(count)]}, features=features
    )


def collect(loader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def test_views_are_the_same_whatever_the_number_of_workers():
    dataset = tiny_dataset()
    epoch_ref = torch.zeros(1, dtype=torch.long).share_memory_()
    views = TrainViews(dataset, TrainTransform(16, seed=5), epoch_ref, "image", "label")
    single = DataLoader(views, batch_size=2, num_workers=0, collate_fn=stack_batch)
    workers = DataLoader(views, batch_size=2, num_workers=2, collate_fn=stack_batch, persistent_workers=True)

    by_epoch = []
    for epoch in (0, 1):
        epoch_ref.fill_(epoch)
        a, b = collect(single), collect(workers)
        assert a["index"].tolist() == list(range(6)) and a["label"].tolist() == [0, 1, 2, 0, 1, 2]
        for key in ("pixel_values", "boxes", "flips", "index", "label"):
            assert torch.equal(a[key], b[key]), (epoch, key)
        by_epoch.append(a)
    # the persistent workers saw the new epoch through the shared tensor: the views changed
    assert not torch.equal(by_epoch[0]["boxes"], by_epoch[1]["boxes"])
    assert not torch.equal(by_epoch[0]["pixel_values"], by_epoch[1]["pixel_values"])
    # and they are exactly the views of that epoch
    image = dataset[4]["image"]
    pixels, box = TrainTransform(16, seed=5)(image, epoch=1, index=4)
    assert torch.equal(by_epoch[1]["pixel_values"][4], pixels)
    assert (
        torch.equal(by_epoch[1]["boxes"][4], box.as_tensor()) and by_epoch[1]["flips"][4].item() == box.flip
    )
