"""Shared pytest set-up: quiet TensorFlow logs and the Keras backend, before any test imports TF."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
