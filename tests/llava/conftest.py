"""Fixtures of the llava tests (helpers live in llava_testkit.py)."""

import pytest

from llava_testkit import make_tokenizer, write_checkpoint


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def ov_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llava-ov-tiny")
    model = write_checkpoint(folder, "ov")
    return str(folder), model


@pytest.fixture(scope="session")
def video_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llava-video-tiny")
    model = write_checkpoint(folder, "video", seed=1)
    return str(folder), model
