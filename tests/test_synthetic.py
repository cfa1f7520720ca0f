"""The synthetic scene/video generator: deterministic, self-consistent truth, smooth video."""

import time

import numpy as np
import pytest

from segserve_models.synthetic import CLASSES, make_scene, make_video
from segserve_models.synthetic.scenes import ASPECT_RANGE, MIN_VISIBLE_AREA, SIDE_RANGE


def assert_scenes_equal(a, b):
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.labels, b.labels)
    assert len(a.instances) == len(b.instances)
    for x, y in zip(a.instances, b.instances):
        assert x.class_id == y.class_id and x.box == y.box
        assert np.array_equal(x.mask, y.mask)


def assert_truth_consistent(scene):
    height, width = scene.labels.shape
    assert scene.image.shape == (height, width, 3) and scene.image.dtype == np.uint8
    assert scene.labels.dtype == np.uint8
    covered = np.zeros((height, width), bool)
    for inst in scene.instances:
        assert inst.mask.shape == (height, width) and inst.mask.dtype == bool
        assert 1 <= inst.class_id < len(CLASSES)
        assert inst.mask.sum() >= MIN_VISIBLE_AREA
        assert not (covered & inst.mask).any(), "visible instance masks must not overlap"
        covered |= inst.mask
        assert (scene.labels[inst.mask] == inst.class_id).all()
        ys, xs = np.nonzero(inst.mask)
        assert inst.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert (scene.labels[~covered] == 0).all(), "pixels outside every instance must be background"


def test_classes():
    assert CLASSES == ["background", "circle", "rectangle", "triangle", "star", "ring"]


def test_same_seed_gives_identical_scene():
    assert_scenes_equal(make_scene(7), make_scene(7))
    assert_scenes_equal(make_scene(7, 200, 300), make_scene(7, 200, 300))


def test_different_seeds_differ():
    images = [make_scene(seed, 160, 160).image for seed in range(5)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j])


@pytest.mark.parametrize("seed", range(20))
def test_labels_match_instances(seed):
    assert_truth_consistent(make_scene(seed))


def test_every_class_appears():
    seen = {inst.class_id for seed in range(30) for inst in make_scene(seed, 200, 200).instances}
    assert seen == set(range(1, len(CLASSES)))


def test_requested_size_is_honoured():
    for height, width in [(160, 640), (640, 160), (333, 222), (256, 256)]:
        scene = make_scene(3, height, width)
        assert scene.image.shape == (height, width, 3)
        assert scene.labels.shape == (height, width)


def test_random_sizes_cover_the_ranges():
    shapes = [make_scene(seed).labels.shape for seed in range(40)]
    for height, width in shapes:
        assert SIDE_RANGE[0] <= height <= SIDE_RANGE[1] and SIDE_RANGE[0] <= width <= SIDE_RANGE[1]
        assert ASPECT_RANGE[0] - 0.01 <= width / height <= ASPECT_RANGE[1] + 0.01
    aspects = [w / h for h, w in shapes]
    assert min(aspects) < 0.8 and max(aspects) > 1.25, "expect both portrait and landscape scenes"


def test_scene_generation_is_fast():
    make_scene(0, 320, 320)  # warm up imports / caches
    # CPU time, not wall time: the test machine may be shared
    started = time.process_time()
    for seed in range(10):
        make_scene(seed, 320, 320)
    assert (time.process_time() - started) / 10 < 0.05


def test_video_is_deterministic_and_consistent():
    a, b = make_video(11, 6, 120, 160), make_video(11, 6, 120, 160)
    assert len(a.frames) == 6 and (a.height, a.width) == (120, 160)
    for x, y in zip(a.frames, b.frames):
        assert_scenes_equal(x, y)
        assert x.image.shape == (120, 160, 3)
        assert_truth_consistent(x)


def test_video_frames_change_smoothly():
    frames = make_video(5, 24, 160, 240).frames
    consecutive = np.mean(
        [np.abs(frames[i + 1].image.astype(np.int16) - frames[i].image).mean() for i in range(len(frames) - 1)]
    )
    unrelated = np.mean(
        [np.abs(make_scene(s, 160, 240).image.astype(np.int16) - make_scene(s + 1, 160, 240).image).mean()
         for s in range(6)]
    )
    assert consecutive < unrelated / 4, (consecutive, unrelated)
    assert consecutive > 0, "the video must actually move"


def test_video_objects_come_and_go():
    counts = {len(frame.instances) for seed in range(4) for frame in make_video(seed, 30, 160, 160).frames}
    assert len(counts) > 1, "instance count never changes: nothing appears or disappears"
