"""SimCLR from the command line, with the reference's flag names (`simclr-tf` once installed with pip).

  python run.py --mode=train_then_eval --flagfile=flags/builtin_quickstart.flags
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from simclr_tf.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
