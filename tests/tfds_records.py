"""Real TFDS record files for a registered dataset builder, written in a few milliseconds (no download).

`tfds.testing.mock_data` replaces the reader, so it cannot show which files a pipeline opens; these are the
files `download_and_prepare()` would leave (records, `dataset_info.json`), read by TFDS's own reader.
"""
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def write_tfds_records(data_dir, name, shard_lengths):
    """Writes `name` (e.g. "cifar10") into `data_dir` with `shard_lengths` ({split: [examples per file]}).

    Example j of a split has id f"{split}_{j:05d}", label j % num_classes and a random image. Returns
    {split: [the record file paths]}.
    """
    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=builder.name,
                                             filetype_suffix="tfrecord")
    tf.io.gfile.makedirs(builder.data_dir)
    rng = np.random.default_rng(0)
    paths, split_infos = {}, []
    for split, lengths in shard_lengths.items():
        paths[split], start = [], 0
        for shard, length in enumerate(lengths):
            path = str(template.replace(split=split).sharded_filepath(shard_index=shard, num_shards=len(lengths)))
            with tf.io.TFRecordWriter(path) as writer:
                for j in range(start, start + length):
                    writer.write(features.serialize_example({
                        "id": f"{split}_{j:05d}", "label": j % features["label"].num_classes,
                        "image": rng.integers(0, 255, features["image"].shape, dtype=np.uint8)}))
            paths[split].append(path)
            start += length
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=list(lengths), num_bytes=0,
                                               filename_template=template))
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    builder.info.write_to_directory(builder.data_dir)
    return paths
