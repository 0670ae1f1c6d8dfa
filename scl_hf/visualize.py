"""Pictures people would rather look at than numbers: stored heatmaps over their images, mAP curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .bank import read_header, slots_to_dense  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Tight layout, parent folders made, figure closed (long runs draw many)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stored_heatmaps(bank_dir: str | Path, rows: list[int]) -> np.ndarray:
    """The stored heatmaps of `rows` as a dense (len(rows), C, S, S) float32 array, whatever the bank's layout.

    Read straight from the files (no writer, no lock): safe beside a running trainer. In the sparse layout the
    classes without a slot read 0, which is what the losses use for them too."""
    header = read_header(bank_dir)
    if not header.with_heatmaps:
        raise ValueError(f"the bank in {bank_dir} holds no heatmaps (method without 'scl')")
    heatmaps = np.load(Path(bank_dir) / "heatmaps.npy", mmap_mode="r")
    if header.layout == "dense":
        return heatmaps[list(rows)].astype(np.float32)
    slots = np.load(Path(bank_dir) / "slots.npy", mmap_mode="r")
    return np.stack([slots_to_dense(heatmaps[row], slots[row], header.num_classes) for row in rows])


def plot_bank_heatmaps(
    bank_dir: str | Path,
    dataset,
    path: str | Path,
    rows: list[int] | None = None,
    class_names: list[str] | None = None,
    image_column: str = "image",
    label_column: str = "label",
    labels_column: str | None = "labels",
    max_classes: int = 3,
) -> Path:
    """One line per image: the image, then the stored heatmaps of its classes.

    The observed labels (one, or several with partial labels; in any format `scl_hf.labels` reads) are marked
    with '*'; other classes are those in the full label list when the dataset has one (shown for inspection only),
    else the highest running-average predictions.
    """
    from .labels import read_labels

    predictions = np.load(Path(bank_dir) / "predictions.npy", mmap_mode="r")
    rows = rows if rows is not None else list(range(min(4, len(dataset))))
    heatmaps = stored_heatmaps(bank_dir, rows)
    names = class_names or [str(i) for i in range(heatmaps.shape[1])]
    if hasattr(dataset, "select"):
        shown = dataset.select(rows)
    else:  # a plain list of rows
        from datasets import Dataset

        shown = Dataset.from_list([{k: v for k, v in dataset[int(r)].items() if k != image_column} for r in rows])
    observed_table = read_labels(shown, label_column, heatmaps.shape[1], names=class_names)
    full_table = (read_labels(shown, labels_column, heatmaps.shape[1], role="evaluation", names=class_names)
                  if labels_column and labels_column in shown.column_names else None)
    fig, axes = plt.subplots(len(rows), max_classes + 1, figsize=(2.2 * (max_classes + 1), 2.2 * len(rows)),
                             squeeze=False)
    for position, (line, row, row_heatmaps) in enumerate(zip(axes, rows, heatmaps)):
        item = dataset[int(row)]
        observed = [int(c) for c in observed_table.positive_ids(position)]
        if full_table is not None:
            others = [int(c) for c in full_table.positive_ids(position) if int(c) not in observed]
        else:
            others = [int(c) for c in np.argsort(-predictions[row]) if c not in observed]
        classes = [*observed, *others][:max_classes]
        image = item[image_column].convert("RGB")
        line[0].imshow(image)
        line[0].set_title(f"row {row}", fontsize=8)
        for ax, cls in zip(line[1:], classes):
            ax.imshow(image, alpha=0.5)
            ax.imshow(row_heatmaps[cls], cmap="jet", alpha=0.5, vmin=0, vmax=1,
                      extent=(0, image.width, image.height, 0))
            mark = "*" if cls in observed else ""
            ax.set_title(f"{names[cls]}{mark} P̄={predictions[row, cls]:.2f}", fontsize=7)
        for ax in line:
            ax.axis("off")
    fig.suptitle("stored heatmaps (running averages); * = an observed label", fontsize=9)
    return save_figure(fig, path)


def plot_map_curves(histories: dict[str, list[dict]], path: str | Path, metric: str = "eval_mAP") -> Path:
    """Evaluation mAP against epoch for each named run (a Trainer's log_history per run)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, history in histories.items():
        points = [(h["epoch"], h[metric]) for h in history if metric in h]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
