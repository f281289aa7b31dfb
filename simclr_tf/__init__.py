"""simclr_tf: SimCLR (v1 and v2) contrastive pretraining in Keras 3 on TensorFlow 2."""
