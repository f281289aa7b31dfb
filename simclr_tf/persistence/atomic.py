"""The one way simclr_tf writes a small file (JSON or text) into a run directory: all of it or nothing.

The content is written to a temporary file with a unique name beside the target (so processes writing
at once do not clash) and then renamed over it, so a reader, or a run killed mid-write, never sees a
half-written file: the target holds either its previous content or the new one. Paths go through
`tf.io.gfile`, so a model_dir on a remote filesystem (gs://...) works too.
"""
import json
import os
import uuid

import tensorflow as tf

PARTIAL_INFIX = ".partial-"


def write_text(path, text):
    """Writes `text` to `path` atomically, creating its directory if needed; returns `path`.

    Example:
      >>> import tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "run", "notes.txt")
      >>> write_text(path, "first")
      '.../run/notes.txt'
      >>> _ = write_text(path, "second")
      >>> open(path).read(), os.listdir(os.path.dirname(path))
      ('second', ['notes.txt'])
    """
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    temporary = f"{path}{PARTIAL_INFIX}{os.getpid()}-{uuid.uuid4().hex}"
    try:
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(text)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:  # Ctrl-C or an error mid-write: the target keeps its content, no partial stays.
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
        raise
    return path


def write_json(path, payload, indent=1, sort_keys=False):
    """Writes `payload` as JSON to `path` atomically; returns `path`.

    The payload is encoded before anything is written, so one that is not JSON leaves the file as it was.

    Example:
      >>> import tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "result.json")
      >>> _ = write_json(path, {"top_1": 0.5, "global_step": 2}, sort_keys=True)
      >>> json.load(open(path))
      {'global_step': 2, 'top_1': 0.5}
      >>> write_json(path, {"bad": object()})
      Traceback (most recent call last):
      ...
      TypeError: Object of type object is not JSON serializable
      >>> json.load(open(path))
      {'global_step': 2, 'top_1': 0.5}
    """
    return write_text(path, json.dumps(payload, indent=indent, sort_keys=sort_keys))
