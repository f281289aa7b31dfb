"""simclr_tf.persistence.atomic: a file holds its old content or its new one, never a part, and no
temporary file stays behind."""
import json
import os

import pytest
import tensorflow as tf

from simclr_tf.persistence import atomic


def test_a_write_interrupted_midway_keeps_the_old_content_and_leaves_no_partial(tmp_path, monkeypatch):
    path = str(tmp_path / "result.json")
    atomic.write_json(path, {"step": 1})
    real_write = tf.io.gfile.GFile.write

    def write_half_then_interrupt(self, text):
        real_write(self, text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.io.gfile.GFile, "write", write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_json(path, {"step": 2, "more": list(range(100))})
    assert json.load(open(path)) == {"step": 1}
    assert os.listdir(tmp_path) == ["result.json"]


def test_json_options_are_kept_and_the_directory_is_created(tmp_path):
    path = str(tmp_path / "new" / "conversion.json")
    assert atomic.write_json(path, {"b": 1, "a": [2]}, indent=2, sort_keys=True) == path
    assert open(path).read() == json.dumps({"b": 1, "a": [2]}, indent=2, sort_keys=True)
