"""A folder of images as a source: `--dataset=/path/to/folder`.

Layouts:
    folder/cat/1.jpg, folder/dog/2.png, ...   class subfolders: labels are the sorted folder names
    folder/1.jpg, folder/2.png, ...           flat: unlabeled (label -1), fine for pretraining
    folder/train/..., folder/test/...         split subfolders (train plus any of test, validation, val),
                                              each laid out as above

Without split subfolders (or with only `train/`), the images form the "train" split minus a held-out
"validation" split: the files whose relative path hashes (SHA-256) below `holdout_fraction`. The choice
depends only on the path, so it is the same on every run and machine and a file never moves between splits
when others are added. Files and folders whose names start with "." are ignored. Symbolic links are
followed, but never into a folder already listed (by its real path): a link to a parent folder, or from one
class folder into another, is skipped with a warning instead of listing images twice or under a wrong class.

Images (jpg, jpeg, png, bmp, gif; any case) are decoded when read. A corrupt or unreadable file is reported
by path: with corrupt_images="skip" it is logged as a warning and left out; with "fail" reading stops with
an error naming the file and the flag that skips it. `info.num_examples` counts files, so it includes
corrupt files that "skip" later leaves out.
"""
import hashlib
import os
import re

from absl import logging
import numpy as np
import tensorflow as tf

from simclr_tf.config import ConfigError
from simclr_tf.data.source_base import CORRUPT_IMAGE_POLICIES, UNLABELED, ImageSource, SourceInfo, worker_share

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLIT_FOLDERS = ("train", "test", "validation", "val")
HOLDOUT_SPLIT = "validation"


def _is_visible(name):
    return not name.startswith(".")


def _is_image(name):
    return _is_visible(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _claim(path, visited, what):
    """Adds the real path of folder `path` to `visited`; False (with a warning) if it was already there."""
    real = os.path.realpath(path)
    if real in visited:
        logging.warning("Not listing %s %s again: it leads (through a symbolic link) to %s, which is already "
                        "listed.", what, path, real)
        return False
    visited.add(real)
    return True


def _images_under(folder, visited):
    """Relative paths (with "/") of every image below `folder`, in sorted order.

    Symbolic links are followed, but never into a folder whose real path is in `visited` (a link to a
    parent would loop); every folder entered is added to it.
    """
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in sorted(dirs) if _is_visible(d)
                   and _claim(os.path.join(parent, d), visited, "folder")]
        relative = os.path.relpath(parent, folder)
        for name in sorted(files):
            if _is_image(name):
                found.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
    return found


def _scan(folder, visited):
    """[(relative path, class name or None)] of one split folder: class subfolders or flat images.

    `visited` holds the real paths of the folders already listed (see `_images_under`).
    """
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    top_images = [entry.name for entry in entries if entry.is_file() and _is_image(entry.name)]
    class_dirs = [entry for entry in entries if entry.is_dir() and _is_visible(entry.name)
                  and _claim(entry.path, visited, "class folder")]
    classes = {entry.name: _images_under(entry.path, visited) for entry in class_dirs}
    classes = {name: paths for name, paths in classes.items() if paths}
    if classes and top_images:
        raise ConfigError(
            f"{folder} holds both images ({top_images[0]}, ...) and class subfolders "
            f"({next(iter(classes))}/, ...). Move the loose images into a class subfolder, or use a folder "
            "without subfolders for unlabeled images.")
    if not classes and not top_images:
        raise ConfigError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {folder} or its subfolders.")
    if classes:
        return [(f"{name}/{path}", name) for name, paths in classes.items() for path in paths]
    return [(name, None) for name in top_images]


def _held_out(relative_path, fraction):
    """Whether a file belongs to the held-out split: its path's hash, read as a number in [0, 1)."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _decode(path):
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def _try_decode(path):
    """(image, True), or (an empty image, False) when the file cannot be read or decoded."""
    attempt = tf.data.Dataset.from_tensors(path).map(lambda p: (_decode(p), True)).ignore_errors()
    failed = tf.data.Dataset.from_tensors((tf.zeros([0, 0, 3], tf.uint8), False))
    return attempt.concatenate(failed).take(1).get_single_element()


def _public_keys(example):
    return {key: example[key] for key in ("image", "label", "id")}


# First bytes of each format `tf.io.decode_image` reads, for saying why a file did not decode.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"))
CORRUPT_IMAGE = "Corrupt or unreadable image"
_SKIP_HINT = (". Remove or replace the file, or pass --corrupt_images=skip to skip unreadable images "
              "(each one is logged).")


def unreadable_reason(path: str) -> str:
    """Why `path` does not decode, found in plain Python (it runs on tf.data's threads: no TensorFlow op).

    Running TensorFlow ops inside a `tf.py_function` of an input pipeline can deadlock on small thread
    pools, so the reason comes from the file's first bytes: unreadable, empty, not an image format that
    `tf.io.decode_image` reads, or a known format whose data is damaged.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    if not head:
        return "the file is empty"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "its WebP data is truncated or corrupt"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return f"its {name} data is truncated or corrupt"
    return f"it is not a JPEG, PNG, GIF, BMP or WebP image (it starts with {head[:8]!r})"


def corrupt_image_message(path: str) -> str:
    """The error for an unreadable image under corrupt_images="fail": the file, why, and the fix."""
    return f"{CORRUPT_IMAGE} {path}: {unreadable_reason(path)}{_SKIP_HINT}"


def corrupt_image_path(error_message: str) -> str | None:
    """The path named by the input pipeline's corrupt-image error in `error_message`, or None."""
    match = re.search(re.escape(CORRUPT_IMAGE) + r" (.+?)" + re.escape(_SKIP_HINT), error_message)
    return match.group(1) if match else None


class ImageFolderSource(ImageSource):
    """Images in a folder, labeled by class subfolder or unlabeled; see the module docstring."""

    def __init__(self, root: str, corrupt_images: str = "skip", holdout_fraction: float = 0.1):
        if corrupt_images not in CORRUPT_IMAGE_POLICIES:
            raise ConfigError(
                f"corrupt_images={corrupt_images!r} is not one of {list(CORRUPT_IMAGE_POLICIES)}.")
        if not 0.0 <= holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction={holdout_fraction} must be in [0, 1).")
        self.root = os.path.abspath(os.path.expanduser(root))
        self.corrupt_images = corrupt_images
        self.holdout_fraction = holdout_fraction
        self._files = self._list_splits()  # split -> [(id, class name or None)]
        labeled = {split: files[0][1] is not None for split, files in self._files.items() if files}
        if len(set(labeled.values())) > 1:
            raise ConfigError(f"In {self.root} some splits have class subfolders and others do not: "
                             f"{labeled}. Use the same layout in every split.")
        self.class_names = tuple(sorted({name for files in self._files.values() for _, name in files
                                         if name is not None}))
        self.info = SourceInfo(
            name=os.path.basename(self.root),
            num_classes=len(self.class_names),
            num_examples={split: len(files) for split, files in self._files.items()},
            image_shape=None,
        )

    def _list_splits(self):
        split_dirs = {name: os.path.join(self.root, name) for name in SPLIT_FOLDERS
                      if os.path.isdir(os.path.join(self.root, name))}
        visited = {os.path.realpath(self.root)}  # real paths of the folders listed so far
        if "train" not in split_dirs:
            return self._hold_out({"train": _scan(self.root, visited)})
        visited.update(os.path.realpath(folder) for folder in split_dirs.values())
        ignored = [entry for entry in sorted(os.listdir(self.root))
                   if _is_visible(entry) and entry not in split_dirs]
        if ignored:
            logging.warning("%s has split folders %s; ignoring the other entries %s.",
                            self.root, sorted(split_dirs), ignored)
        files = {split: [(f"{split}/{path}", name) for path, name in _scan(folder, visited)]
                 for split, folder in split_dirs.items()}
        return self._hold_out(files) if len(files) == 1 else files

    def _hold_out(self, files):
        """Splits a lone "train" listing into "train" and the held-out "validation" split."""
        if self.holdout_fraction == 0:
            return files
        train = files["train"]
        held = [_held_out(path, self.holdout_fraction) for path, _ in train]
        return {"train": [file for file, out in zip(train, held) if not out],
                HOLDOUT_SPLIT: [file for file, out in zip(train, held) if out]}

    def dataset(self, split: str, shuffle_files: bool = False, seed: int | None = None,
                input_context=None) -> tf.data.Dataset:
        """One epoch of `split`; under several workers, this worker's share of the file list (every n-th
        file in sorted order), the other files never opened."""
        self.check_split(split)
        files = self._files[split]
        if not files:
            raise ConfigError(f"Split {split!r} of {self.root} has no images; raise holdout_fraction or add "
                             "images.")
        return self._read(worker_share(files, input_context, f"Split {split!r} of {self.root}"),
                          shuffle_files, seed)

    def subset_dataset(self, split: str, example_ids, shuffle_files: bool = False,
                       seed: int | None = None, input_context=None) -> tf.data.Dataset:
        """Examples whose id (relative path) is in `example_ids`; other files are never opened."""
        self.check_split(split)
        wanted = {str(i.decode("utf-8") if isinstance(i, bytes) else i) for i in example_ids}
        files = [(path, name) for path, name in self._files[split] if path in wanted]
        if not files:
            raise ConfigError(f"None of the {len(wanted)} requested ids is an image of split {split!r} of "
                             f"{self.root}; the label subset was chosen from other files. Delete "
                             "label_subset.json from --model_dir (or use a new one) to choose again.")
        files = worker_share(files, input_context, f"The labelled subset of split {split!r} of {self.root}")
        return self._read(files, shuffle_files, seed)

    def labels_and_ids(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """`(ids, labels)` from the file listing, in sorted path order, without opening any file.

        Like `info.num_examples`, this lists corrupt files too, which `dataset` leaves out with
        corrupt_images="skip".
        """
        self.check_split(split)
        files = self._files[split]
        ids = np.array([path for path, _ in files], dtype=str)
        return ids, self._labels(files)

    def _labels(self, files):
        index = {name: label for label, name in enumerate(self.class_names)}
        return np.array([index.get(name, UNLABELED) for _, name in files], np.int64)

    def _read(self, files, shuffle_files, seed):
        """Decoded examples of `files` ([(relative path, class name or None)]), corrupt ones handled."""
        ids = [path for path, _ in files]
        ds = tf.data.Dataset.from_tensor_slices({
            "path": np.array([os.path.join(self.root, *path.split("/")) for path in ids]),
            "label": self._labels(files),
            "id": np.array(ids),
        })
        if shuffle_files:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(self._load, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.filter(self._keep_or_report).map(_public_keys)

    def _load(self, example):
        image, decoded = _try_decode(example["path"])
        return {**example, "image": image, "decoded": decoded}

    def _keep_or_report(self, example):
        """True for a decoded image; for a bad one, reports it (log or error) and returns False."""
        return tf.cond(example["decoded"], lambda: tf.constant(True), lambda: self._report(example["path"]))

    def _report(self, path):
        if self.corrupt_images == "fail":
            # No Python here: a tf.py_function would run on tf.data's threads, and an iterator still
            # reading ahead while the process exits on this error then waits forever for the interpreter.
            message = tf.strings.join([CORRUPT_IMAGE, " ", path, _SKIP_HINT])
            with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
                return tf.equal(tf.strings.length(message), -1)  # False, never reached
        logged = tf.py_function(self._log_skipped_image, [path], tf.string)
        return tf.equal(tf.strings.length(logged), -1)  # False, after the warning has been logged

    @staticmethod
    def _log_skipped_image(path):
        path = path.numpy().decode("utf-8")
        logging.warning("Skipping corrupt or unreadable image %s: %s (corrupt_images='skip').",
                        path, unreadable_reason(path))
        return path
