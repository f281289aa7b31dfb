"""Everything simclr_tf saves and loads: the run directory and the formats `--checkpoint` reads.

- `run_dir`: the name of every file and directory in a run's model_dir, and finding checkpoints and exports.
- `atomic`: the one writer of small files (JSON), all or nothing.
- `checkpoints`: step-numbered checkpoints (atomic save, pruning, restore, resume, disk-space checks).
- `export`: SavedModel exports (serving, reusable SavedModel, TFSMLayer) and loading them.
- `pretrained`: loading a trained model from any format `--checkpoint` takes; `model_config.json`.
- `reference/`: the reference SimCLR's variable names (`names`) and checkpoint loader (`checkpoints`).
- `label_subset`: a fine-tuning run's `label_subset.json` (data.subsets chooses the subset).
- `modes`: --mode=convert and --mode=export, which only read and write run directories.

Orchestration (train.py, tasks.py, cli.py) calls this package; models and data never do.
"""
