"""Reading checkpoints of the reference SimCLR (google-research/simclr): `names` maps its variable names to
simclr_tf weights and detects the architecture; `checkpoints` builds the model and loads the weights."""
