"""Masks out: COCO RLE (pycocotools) for JSON, palettised PNG label maps."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from segserve.codecs.geometry import RestoreIndex
from segserve.codecs.labels import encode_label_png  # noqa: F401 - where the pipelines import it from


def encode_rle(masks: np.ndarray) -> list[dict]:
    """(h, w, n) or (h, w) binary masks -> COCO compressed RLEs with str counts."""
    if masks.ndim == 2:
        masks = masks[:, :, None]
    encoded = mask_utils.encode(np.asfortranarray(masks, dtype=np.uint8))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in encoded]


def semantic_segments(labels: np.ndarray, class_names: list[str]) -> list[dict]:
    """One binary RLE per class present in the label map, with its pixel area."""
    areas = np.bincount(labels.ravel(), minlength=len(class_names))
    present = np.flatnonzero(areas)
    if present.size == 0:
        return []
    # Column-major masks are what RLE walks; building them from labels.T avoids a copy per class.
    masks = (labels.T[None, :, :] == present[:, None, None].astype(labels.dtype)).transpose(2, 1, 0)
    rles = encode_rle(masks)
    return [segment(int(c), class_names, int(areas[c]), rle) for c, rle in zip(present, rles)]


def segment(class_id: int, class_names: list[str], area: int, rle: dict) -> dict:
    return {"class_id": class_id, "label": class_names[class_id] if class_id < len(class_names) else str(class_id), "area": area, "mask": rle}


def restored_segments(plane: np.ndarray, index: RestoreIndex, class_names: list[str]) -> list[dict]:
    """``semantic_segments(plane.take(index.rows, 0).take(index.cols, 1), class_names)``, the
    same RLEs and areas, computed without the full-size map: from the runs of the model pixels
    the restore uses, at model resolution, mapped to the original's column-major order.

    Each original column is a model column with each model row repeated over the original rows
    it covers, so the runs of the whole map are, column after column, the runs of its model
    column placed at the original rows their model rows start at; runs that meet across a
    column boundary with the same class merge. A class's binary RLE is then its runs and the
    gaps between them, its area their total length. The work and the GIL held scale with the
    model resolution and the number of runs, not with the original's pixels."""
    height, width = index.height, index.width
    numel = height * width
    if numel == 0:
        return []
    # (distinct model rows, distinct model columns): every model pixel the restore reads (a view
    # when they are contiguous, as whenever the image is at least the model's content size)
    used = plane[index.row_span][:, index.col_span]
    depth, columns = used.shape
    starts_here = np.empty(used.shape, dtype=bool)  # a run starts here, walking down its column
    starts_here[0] = True
    np.not_equal(used[1:], used[:-1], out=starts_here[1:])
    flat = starts_here.T.ravel().nonzero()[0]  # run starts in column-major order: column * depth + row
    column_of, row_of = np.divmod(flat, depth)
    run_value = used[row_of, column_of]
    run_row = index.row_starts[row_of]  # the original row each run starts at
    first = np.zeros(columns + 1, dtype=np.intp)  # runs of distinct column j: first[j] .. first[j + 1]
    np.bincount(column_of, minlength=columns).cumsum(out=first[1:])
    # Every original column x repeats the runs of its distinct model column.
    per_x = first[1:][index.col_of] - first[:-1][index.col_of]
    x_first = per_x.cumsum()
    total = int(x_first[-1])
    x_first -= per_x
    run = np.repeat(first[:-1][index.col_of] - x_first, per_x)
    run += np.arange(total)
    position = np.repeat(np.arange(0, numel, height, dtype=np.int64), per_x)
    position += run_row[run]
    value = run_value[run]
    # same class across a column boundary: one run
    keep = np.empty(total, dtype=bool)
    keep[0] = True
    np.not_equal(value[1:], value[:-1], out=keep[1:])
    return segments_from_runs(position[keep], value[keep], height, width, class_names)


def segments_from_runs(position: np.ndarray, value: np.ndarray, height: int, width: int, class_names: list[str]) -> list[dict]:
    """The label map's runs in column-major order -> one binary RLE per class present, with its area.

    ``position`` (int64, ascending, starting at 0) is where each run starts in the column-major
    flattened (height, width) map, ``value`` its class; consecutive runs differ in class. A
    class's binary RLE is then its runs and the gaps between them, its area their total length."""
    numel = height * width
    if numel == 0:
        return []
    if value.dtype.kind == "i" and value.min() < 0:
        raise ValueError(f"negative class id {int(value.min())} in the label map")
    runs = len(position)
    end = np.empty_like(position)
    end[:-1] = position[1:]
    end[-1] = numel
    # Per class, in position order: zeros before each of its runs, the run, ..., trailing zeros.
    order = np.argsort(value, kind="stable")
    value, position, end = value[order], position[order], end[order]
    new_class = np.empty(runs, dtype=bool)
    new_class[0] = True
    np.not_equal(value[1:], value[:-1], out=new_class[1:])
    group = new_class.nonzero()[0]
    previous_end = np.empty_like(end)
    previous_end[1:] = end[:-1]
    previous_end[group] = 0
    counts = np.empty(2 * runs + 1, dtype=np.int64)
    np.subtract(position, previous_end, out=counts[0:-1:2])
    np.subtract(end, position, out=counts[1::2])
    areas = np.add.reduceat(counts[1::2], group).tolist()
    bounds = group.tolist() + [runs]
    uncompressed = []
    for g in range(len(group)):
        a, b = bounds[g], bounds[g + 1]
        class_end = int(end[b - 1])
        if class_end < numel:  # trailing zeros: counted in place of the next class's first zeros
            class_counts = counts[2 * a : 2 * b + 1].copy()
            class_counts[-1] = numel - class_end
        else:
            class_counts = counts[2 * a : 2 * b]
        uncompressed.append({"size": [height, width], "counts": class_counts})
    rles = mask_utils.frPyObjects(uncompressed, height, width)
    return [
        segment(c, class_names, area, {"size": [height, width], "counts": rle["counts"].decode("ascii")})
        for c, area, rle in zip(value[group].tolist(), areas, rles)
    ]
