"""Frames and stamps of aot_eval.video against the stock lmms-eval 0.7.3 wrappers.

Stock ``LlavaVid.load_video`` does not use ``self``, so it is called directly as the oracle for
LLaVA-Video's frames, stamps and duration. Frame folders follow the rules the stock wrappers
apply inline (see aot_eval/video.py).
"""

from __future__ import annotations

import glob
import os
from fractions import Fraction

import pytest

np = pytest.importorskip("numpy")
av = pytest.importorskip("av")

from media import write_mp4  # noqa: E402
from aot_eval.video import (VisualLoadError, llava_vid_frames, llava_vid_stamps,  # noqa: E402
                            ov_frames)


def write_clip(path, seconds: float, rate) -> str:
    images = (np.full((48, 64, 3), (i * 3) % 250, dtype=np.uint8)
              for i in range(int(seconds * float(rate))))
    return write_mp4(path, images, rate=rate)


@pytest.fixture(scope="module")
def ntsc_clip(tmp_path_factory):
    """12 s at 29.97 fps: stock stamps i / 30 on the 1-fps path."""
    return write_clip(tmp_path_factory.mktemp("clips") / "ntsc.mp4", 12, Fraction(30000, 1001))


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("frames") / "tvqa"
    folder.mkdir()
    for i in np.random.default_rng(0).permutation(15).tolist():
        Image.fromarray(np.full((20, 30, 3), i * 10, dtype=np.uint8)).save(
            folder / f"frame_{i:03d}.png")
    return str(folder)


@pytest.mark.parametrize("max_frames,force_sample", [(16, False), (8, False), (16, True)])
def test_llava_vid_frames_and_stamps_equal_stock(ntsc_clip, max_frames, force_sample):
    pytest.importorskip("decord")
    pytest.importorskip("lmms_eval")
    from lmms_eval.models.simple.llava_vid import LlavaVid

    frames, stamps, duration = LlavaVid.load_video(None, ntsc_clip, max_frames, 1, force_sample)
    ours = llava_vid_frames([ntsc_clip], max_frames, "videomme", video_fps=1,
                            force_sample=force_sample)
    np.testing.assert_array_equal(ours.frames, frames)
    assert ours.time_string() == stamps
    assert f"{ours.duration:.2f}" == f"{duration:.2f}"
    if max_frames == 16 and not force_sample:  # 1-fps path: frame 330 stamped 11.00s, not 11.01s
        assert stamps.endswith("10.00s,11.00s")


def test_llava_vid_stamps_rule():
    assert llava_vid_stamps([0, 30, 330], 360, 29.97, 64, 1, False) == [0.0, 1.0, 11.0]
    assert llava_vid_stamps([0, 330], 360, 29.97, 64, 1, True) == [0.0, 330 / 29.97]
    assert llava_vid_stamps([0, 15], 60, 30.0, 64, 2, False) == [0.0, 1.0]  # i / round(30 / 2)
    with pytest.raises(ValueError, match="cannot sample"):
        llava_vid_stamps([0], 10, 0.4, 64, 1, False)


def test_frame_folder_stock_rules(frame_folder):
    # llava_onevision: cannot decode a folder -> the question is asked without the video
    with pytest.raises(VisualLoadError, match="folder of frames") as error:
        ov_frames([frame_folder], 4)
    assert error.value.paths == [frame_folder]
    # llava_vid: glob order (not sorted), linspace over the files, only for *mvbench* tasks
    files = glob.glob(frame_folder + "/*")
    got = llava_vid_frames([frame_folder], 6, "mvbench_episodic_reasoning")
    picked = np.linspace(0, len(files) - 1, 6, dtype=int)
    assert [int(f[0, 0, 0]) for f in got.frames] == \
        [int(os.path.basename(files[i])[6:9]) * 10 for i in picked]
    assert got.time_string() == ",".join(f"{i / 3:.2f}s" for i in picked)
    assert got.duration == 15 / 3
    with pytest.raises(VisualLoadError, match="mvbench") as error:
        llava_vid_frames([frame_folder], 6, "videomme")
    assert error.value.paths == files  # the stock answer lists the globbed files


@pytest.mark.parametrize("reader", ["ov", "video"])
def test_frame_folder_sorted_option(frame_folder, reader):
    got = (ov_frames([frame_folder], 5, "sorted") if reader == "ov" else
           llava_vid_frames([frame_folder], 5, "anytask", frame_folders="sorted"))
    picked = np.linspace(0, 14, 5, dtype=int)
    assert [int(f[0, 0, 0]) for f in got.frames] == (picked * 10).tolist()
    with pytest.raises(ValueError, match="frame_folders='name'"):
        ov_frames([frame_folder], 5, "name")
