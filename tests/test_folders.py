"""Tests for simclr_tf.data.folders: image folders as sources, splits, hold-out and corrupt files."""
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.data import folders


def write_image(path, value, size=(6, 5), fmt="png"):
    """A small constant image (every pixel `value`); returns its path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = tf.fill([size[0], size[1], 3], tf.constant(value, tf.uint8))
    encoded = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=100)
    tf.io.write_file(path, encoded)
    return path


def read_all(source, split, **kwargs):
    return {example["id"].numpy().decode(): example for example in source.dataset(split, **kwargs)}


def test_class_subfolders_give_sorted_labels_and_class_names(tmp_path):
    write_image(f"{tmp_path}/zebra/a.png", 200)
    write_image(f"{tmp_path}/zebra/nested/b.png", 200)
    write_image(f"{tmp_path}/ant/c.JPG", 50, fmt="jpeg")
    write_image(f"{tmp_path}/ant/d.Jpeg", 50, fmt="jpeg")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"ignored")
    source = folders.ImageFolderSource(str(tmp_path), holdout_fraction=0.0)
    assert source.class_names == ("ant", "zebra")
    assert source.info.num_classes == 2
    assert source.info.num_examples == {"train": 4}
    assert source.info.image_shape is None
    examples = read_all(source, "train")
    assert sorted(examples) == ["ant/c.JPG", "ant/d.Jpeg", "zebra/a.png", "zebra/nested/b.png"]
    for example in examples.values():
        image, label = example["image"].numpy(), int(example["label"])
        assert example["image"].dtype == tf.uint8 and image.shape == (6, 5, 3)
        assert example["label"].dtype == tf.int64
        assert abs(int(image.mean()) - (50 if label == 0 else 200)) <= 2


def test_flat_folder_is_unlabeled(tmp_path):
    for index in range(3):
        write_image(f"{tmp_path}/img{index}.png", 10 * index)
    source = folders.ImageFolderSource(str(tmp_path), holdout_fraction=0.0)
    assert source.info.num_classes == 0 and source.class_names == ()
    examples = read_all(source, "train")
    assert sorted(examples) == ["img0.png", "img1.png", "img2.png"]
    assert all(int(example["label"]) == -1 for example in examples.values())


def test_train_and_test_subfolders_are_splits(tmp_path):
    write_image(f"{tmp_path}/train/cat/1.png", 1)
    write_image(f"{tmp_path}/train/cat/2.png", 2)
    write_image(f"{tmp_path}/train/dog/3.png", 3)
    write_image(f"{tmp_path}/test/dog/4.png", 4)
    source = folders.ImageFolderSource(str(tmp_path))
    assert source.info.num_examples == {"train": 3, "test": 1}
    assert source.class_names == ("cat", "dog")
    assert sorted(read_all(source, "test")) == ["test/dog/4.png"]
    assert int(read_all(source, "test")["test/dog/4.png"]["label"]) == 1


def test_holdout_split_is_deterministic_and_disjoint(tmp_path):
    for index in range(200):
        write_image(f"{tmp_path}/{'ab'[index % 2]}/{index}.png", 0, size=(2, 2))
    first = folders.ImageFolderSource(str(tmp_path), holdout_fraction=0.25)
    second = folders.ImageFolderSource(str(tmp_path), holdout_fraction=0.25)
    train, held_out = set(read_all(first, "train")), set(read_all(first, "validation"))
    assert train.isdisjoint(held_out) and len(train | held_out) == 200
    assert 25 < len(held_out) < 75
    assert first.info.num_examples == {"train": len(train), "validation": len(held_out)}
    assert held_out == set(read_all(second, "validation"))


def test_shuffle_files_changes_the_order_only(tmp_path):
    for index in range(20):
        write_image(f"{tmp_path}/{index:02d}.png", index, size=(2, 2))
    source = folders.ImageFolderSource(str(tmp_path), holdout_fraction=0.0)
    in_order = list(read_all(source, "train"))
    shuffled = list(read_all(source, "train", shuffle_files=True, seed=3))
    assert in_order == sorted(in_order)
    assert sorted(shuffled) == in_order and shuffled != in_order


def write_corrupt_files(folder):
    """Two good images, a garbage .jpg and a truncated JPEG; returns the bad files' paths."""
    write_image(f"{folder}/cat/good.png", 10)
    write_image(f"{folder}/dog/good.jpg", 20, fmt="jpeg")
    garbage = f"{folder}/cat/garbage.jpg"
    with open(garbage, "wb") as f:
        f.write(b"this is not an image" * 10)
    truncated = f"{folder}/dog/truncated.jpg"
    full = tf.io.encode_jpeg(tf.fill([64, 64, 3], tf.constant(90, tf.uint8))).numpy()
    with open(truncated, "wb") as f:
        f.write(full[: len(full) // 2])
    return [garbage, truncated]


def test_skip_mode_logs_each_corrupt_file_by_path_and_yields_the_good_ones(tmp_path, caplog):
    bad_paths = write_corrupt_files(tmp_path)
    source = folders.ImageFolderSource(str(tmp_path), corrupt_images="skip", holdout_fraction=0.0)
    with caplog.at_level(logging.WARNING):
        examples = read_all(source, "train")
    assert sorted(examples) == ["cat/good.png", "dog/good.jpg"]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    for path in bad_paths:
        assert any(path in message for message in warnings), (path, warnings)


@pytest.mark.parametrize("bad_name", ["cat/garbage.jpg", "dog/truncated.jpg"])
def test_fail_mode_stops_with_the_path_and_the_flag_that_skips(tmp_path, bad_name):
    write_corrupt_files(tmp_path)
    other = "dog/truncated.jpg" if bad_name == "cat/garbage.jpg" else "cat/garbage.jpg"
    os.remove(os.path.join(tmp_path, other))
    source = folders.ImageFolderSource(str(tmp_path), corrupt_images="fail", holdout_fraction=0.0)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        read_all(source, "train")
    assert os.path.join(tmp_path, bad_name) in str(error.value)
    assert "--corrupt_images=skip" in str(error.value)


def test_fail_mode_runs_no_python_on_the_input_pipeline_threads(tmp_path, monkeypatch):
    # A tf.py_function in the pipeline ran on tf.data's threads: a process exiting on the corrupt-image
    # error, its iterator still reading ahead, then hung in the interpreter's final garbage collection
    # (seen in CI, about 1 run in 30 here).
    write_corrupt_files(tmp_path)

    def no_python_in_the_pipeline(*args, **kwargs):
        raise AssertionError("tf.py_function in the corrupt_images='fail' pipeline")

    monkeypatch.setattr(tf, "py_function", no_python_in_the_pipeline)
    source = folders.ImageFolderSource(str(tmp_path), corrupt_images="fail", holdout_fraction=0.0)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        read_all(source, "train")
    path = folders.corrupt_image_path(error.value.message)
    assert path in [os.path.join(tmp_path, "cat", "garbage.jpg"), os.path.join(tmp_path, "dog", "truncated.jpg")]


def test_unreadable_reason_says_what_is_wrong_without_tensorflow_ops(tmp_path, monkeypatch):
    garbage, truncated = write_corrupt_files(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    png = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png[:20])

    def no_tensorflow(*args, **kwargs):
        raise AssertionError("a TensorFlow op on tf.data's threads")

    monkeypatch.setattr(tf.io, "read_file", no_tensorflow)
    monkeypatch.setattr(tf.io, "decode_image", no_tensorflow)
    assert folders.unreadable_reason(garbage) == (
        "it is not a JPEG, PNG, GIF, BMP or WebP image (it starts with b'this is ')")
    assert folders.unreadable_reason(truncated) == "its JPEG data is truncated or corrupt"
    assert folders.unreadable_reason(str(cut_png)) == "its PNG data is truncated or corrupt"
    assert folders.unreadable_reason(str(empty)) == "the file is empty"
    assert folders.unreadable_reason(str(tmp_path / "gone.jpg")) == "it cannot be read (No such file or directory)"


def test_the_corrupt_image_message_names_the_path_the_reason_and_the_fix(tmp_path):
    bad = tmp_path / "a folder. with dots" / "x.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"nope")
    message = folders.corrupt_image_message(str(bad))
    assert message == (f"Corrupt or unreadable image {bad}: it is not a JPEG, PNG, GIF, BMP or WebP image "
                       "(it starts with b'nope'). Remove or replace the file, or pass --corrupt_images=skip to "
                       "skip unreadable images (each one is logged).")
    pipeline_error = f"{{{{node Assert}}}} assertion failed: [Corrupt or unreadable image {bad}{folders._SKIP_HINT}]"
    assert folders.corrupt_image_path(pipeline_error) == str(bad)
    assert folders.corrupt_image_path("assertion failed: [something else]") is None


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No images"):
        folders.ImageFolderSource(str(tmp_path))


def test_images_beside_class_subfolders_are_refused(tmp_path):
    write_image(f"{tmp_path}/loose.png", 1)
    write_image(f"{tmp_path}/cat/1.png", 1)
    with pytest.raises(ValueError, match="class subfolder"):
        folders.ImageFolderSource(str(tmp_path))


def test_empty_holdout_split_is_a_clear_error(tmp_path):
    write_image(f"{tmp_path}/only.png", 1)
    source = folders.ImageFolderSource(str(tmp_path), holdout_fraction=0.01)
    assert source.info.num_examples["validation"] == 0
    with pytest.raises(ValueError, match="has no images"):
        source.dataset("validation")


def test_unknown_split_names_the_available_ones(tmp_path):
    write_image(f"{tmp_path}/a.png", 1)
    source = folders.ImageFolderSource(str(tmp_path))
    with pytest.raises(ValueError, match=r"\['train', 'validation'\]"):
        source.dataset("test")


def test_decoded_images_match_the_written_pixels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    tf.io.write_file(f"{tmp_path}/a.png", tf.io.encode_png(pixels))
    gray = pixels[..., :1]
    tf.io.write_file(f"{tmp_path}/gray.png", tf.io.encode_png(gray))
    examples = read_all(folders.ImageFolderSource(str(tmp_path), holdout_fraction=0.0), "train")
    np.testing.assert_array_equal(examples["a.png"]["image"].numpy(), pixels)
    np.testing.assert_array_equal(examples["gray.png"]["image"].numpy(), np.repeat(gray, 3, axis=-1))


def test_workers_read_disjoint_shares_of_the_file_list(tmp_path):
    for index in range(5):
        write_image(f"{tmp_path}/{'ab'[index % 2]}/{index}.png", index)
    source = folders.ImageFolderSource(str(tmp_path), holdout_fraction=0.0)
    shares = [sorted(read_all(source, "train", shuffle_files=True, seed=1,
                              input_context=tf.distribute.InputContext(2, index, 2)))
              for index in range(2)]
    # Every other file of the sorted list: a/0, a/4, b/3 and a/2, b/1.
    assert shares == [["a/0.png", "a/4.png", "b/3.png"], ["a/2.png", "b/1.png"]]
    subset = [sorted(example["id"].numpy().decode() for example in source.subset_dataset(
        "train", ["a/0.png", "a/2.png", "b/1.png"], input_context=tf.distribute.InputContext(2, index, 2)))
        for index in range(2)]
    assert subset == [["a/0.png", "b/1.png"], ["a/2.png"]]


def test_symbolic_links_are_followed_but_never_into_a_folder_already_listed(tmp_path, caplog):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    for index in range(3):
        write_image(f"{photos}/a/{index}.png", index)
    write_image(f"{photos}/b/3.png", 3)
    write_image(f"{elsewhere}/4.png", 4)
    os.symlink("..", photos / "a" / "up")  # a loop: ln -s .. photos/a/up
    os.symlink(photos / "b", photos / "a" / "to_b")  # into another class: b's image is not an "a"
    os.symlink(elsewhere, photos / "b" / "more")  # a folder listed nowhere else: followed
    with caplog.at_level(logging.WARNING):
        source = folders.ImageFolderSource(str(photos), holdout_fraction=0.0)
    ids, labels = source.labels_and_ids("train")
    assert dict(zip(ids.tolist(), labels.tolist())) == {
        "a/0.png": 0, "a/1.png": 0, "a/2.png": 0, "b/3.png": 1, "b/more/4.png": 1}
    assert source.info.num_examples == {"train": 5}
    skipped = [record.getMessage() for record in caplog.records if "already listed" in record.getMessage()]
    assert len(skipped) == 2 and any("a/up" in m for m in skipped) and any("a/to_b" in m for m in skipped)
