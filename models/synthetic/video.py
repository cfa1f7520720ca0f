"""Seeded synthetic videos: shapes drift, turn, appear and leave while the camera pans.

Motion is smooth (a few pixels and degrees per frame), so neighbouring frames are close;
keyframe feature-reuse benchmarks rely on that. Shapes live in world coordinates over a
background larger than the frame, and each frame is the camera's window onto that world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segserve_models.synthetic.scenes import (
    Scene,
    Shape,
    make_background,
    random_shape,
    render,
)

MAX_PAN_PER_FRAME = 2.0  # camera speed, pixels/frame
MAX_SPEED = 2.5  # shape speed, pixels/frame
MAX_TURN = np.deg2rad(3.0)  # shape rotation, radians/frame
NOISE_SIGMA = 3.0  # sensor noise, redrawn every frame


@dataclass
class Video:
    frames: list[Scene]
    height: int
    width: int


@dataclass(frozen=True)
class _Track:
    """A shape's trajectory: where it is at its first frame and how it moves after."""

    shape: Shape  # pose at frame `start`, world coordinates
    start: int
    end: int  # exclusive
    velocity: tuple[float, float]
    turn: float

    def at(self, frame: int) -> Shape | None:
        if not self.start <= frame < self.end:
            return None
        t = frame - self.start
        return self.shape.moved(self.velocity[0] * t, self.velocity[1] * t, self.turn * t)


def _random_track(
    rng: np.random.Generator, frames: int, height: int, width: int, margin: int, always_on: bool
) -> _Track:
    if always_on:
        start, end = 0, frames
    else:
        start = int(rng.integers(0, frames))
        end = int(rng.integers(start + 1, frames + 1))
    speed, heading = rng.uniform(0, MAX_SPEED), rng.uniform(0, 2 * np.pi)
    return _Track(
        # sized for the frame and placed in the camera's central view
        shape=random_shape(rng, height, width).moved(margin, margin),
        start=start,
        end=end,
        velocity=(float(speed * np.cos(heading)), float(speed * np.sin(heading))),
        turn=float(rng.uniform(-MAX_TURN, MAX_TURN)),
    )


def make_video(seed: int, frames: int, height: int, width: int) -> Video:
    """`frames` scenes of height x width; each frame's truth covers what is visible in it."""
    rng = np.random.default_rng(seed)
    margin = int(np.ceil(MAX_PAN_PER_FRAME * frames / 2)) + 1  # room for the camera to pan
    world = make_background(rng, height + 2 * margin, width + 2 * margin)
    pan = rng.uniform(-MAX_PAN_PER_FRAME, MAX_PAN_PER_FRAME, size=2)
    n_tracks = int(rng.integers(3, 9))
    # Half the shapes stay for the whole clip; the rest come and go at random frames.
    tracks = [_random_track(rng, frames, height, width, margin, always_on=i < n_tracks // 2) for i in range(n_tracks)]
    noise_rng = np.random.default_rng([seed, 1])
    scenes = []
    for frame in range(frames):
        # Camera offset moves linearly from one side of the margin to the other, centred.
        offset_x = margin + pan[0] * (frame - (frames - 1) / 2)
        offset_y = margin + pan[1] * (frame - (frames - 1) / 2)
        x0, y0 = int(round(offset_x)), int(round(offset_y))
        background = world[y0 : y0 + height, x0 : x0 + width]
        visible = [s.moved(-x0, -y0) for s in (track.at(frame) for track in tracks) if s is not None]
        scenes.append(render(background, visible, noise_rng, NOISE_SIGMA))
    return Video(scenes, height, width)
