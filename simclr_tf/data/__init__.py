"""simclr_tf data: sources, augmentations and input pipelines."""
