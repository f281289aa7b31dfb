"""simclr_tf models: ResNet encoder, heads and the SimCLR training model."""
