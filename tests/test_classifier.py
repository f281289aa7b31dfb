"""The fine-tuning classifier: what is frozen stays frozen (BN statistics included), what trains changes,
ft_proj_selector keeps the right projection layers, zero-init starts at zero logits, save/load."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import optimizers
from simclr_tf.models.classifier import SimCLRClassifier, build_classifier
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel
from tests import layer_checks

SIZE = 16
NUM_CLASSES = 5


def pretrained_model(num_proj_layers=3, seed=0):
    keras.utils.set_random_seed(seed)
    model = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
                        ProjectionHead(num_layers=num_proj_layers, out_dim=8), num_classes=0)
    model(tf.zeros([1, SIZE, SIZE, 3]))
    layer_checks.perturb_weights(model, seed)
    return model


def batch(seed=0, size=8):
    rng = np.random.default_rng(seed)
    return (rng.random((size, SIZE, SIZE, 3), dtype=np.float32),
            rng.integers(0, NUM_CLASSES, size).astype(np.int64))


def snapshot(layers):
    return {v.path: np.array(v) for layer in layers for v in layer.weights}


@pytest.mark.parametrize("block", [-1, 0, 2, 4])
def test_fine_tune_after_block_freezes_weights_and_bn_statistics_below_it(block):
    pretrained = pretrained_model()
    classifier = build_classifier(pretrained, NUM_CLASSES, SIZE, ft_proj_selector=1,
                                  fine_tune_after_block=block, optimizer_name="momentum")
    encoder = classifier.encoder
    frozen = encoder.layers_up_to_block(block)
    trained = [layer for layer in [encoder.stem] + encoder.block_groups if layer not in frozen]
    trained += [classifier.projection_head, classifier.supervised_head]
    before_frozen, before_trained = snapshot(frozen), snapshot(trained)
    classifier.compile(optimizer=optimizers.build_optimizer("momentum", 0.1))
    images, labels = batch()
    for _ in range(2):
        classifier.train_on_batch(images, labels)
    after_frozen, after_trained = snapshot(frozen), snapshot(trained)
    for path, value in before_frozen.items():  # kernels, gammas, moving means and variances alike
        np.testing.assert_array_equal(after_frozen[path], value, err_msg=path)
    changed = [path for path, value in before_trained.items() if not np.array_equal(after_trained[path], value)]
    # Every trained weight changes: kernels and BN parameters by gradient, moving statistics by the batch.
    assert sorted(changed) == sorted(before_trained)
    assert any("moving_mean" in path for path in changed)
    # Only the trained layers are trainable variables: no variable without a gradient.
    trainable = {v.path for v in classifier.trainable_variables}
    assert not trainable & set(before_frozen)


@pytest.mark.parametrize("selector,kept", [(0, 0), (1, 1), (2, 2), (-1, 3)])
def test_ft_proj_selector_keeps_that_many_projection_layers(selector, kept):
    pretrained = pretrained_model(num_proj_layers=3)
    classifier = build_classifier(pretrained, NUM_CLASSES, SIZE, ft_proj_selector=selector)
    assert len(classifier.projection_head.linear_layers) == kept
    images, _ = batch()
    hidden = classifier(images)["proj_head_output"]
    # The classifier reads the pretrained head's hidden `selector`, computed by the copied layers.
    features = pretrained.encoder(images, training=False)
    pretrained.projection_head.ft_proj_selector = selector
    _, expected = pretrained.projection_head(features, training=False)
    np.testing.assert_allclose(hidden, expected, atol=1e-5)


def test_copied_weights_equal_the_pretrained_ones_and_are_not_shared():
    pretrained = pretrained_model()
    classifier = build_classifier(pretrained, NUM_CLASSES, SIZE, ft_proj_selector=1)
    images, _ = batch()
    np.testing.assert_allclose(classifier(images)["final_avg_pool"],
                               pretrained.encoder(images, training=False), atol=1e-5)
    classifier.encoder.weights[0].assign(classifier.encoder.weights[0] + 1.0)
    assert not np.allclose(classifier.encoder.weights[0], pretrained.encoder.weights[0])


def test_zero_init_head_starts_at_zero_logits():
    classifier = build_classifier(pretrained_model(), NUM_CLASSES, SIZE, zero_init_logits_layer=True)
    logits = classifier(batch()[0])["logits_sup"]
    np.testing.assert_array_equal(logits, np.zeros((8, NUM_CLASSES)))
    default = build_classifier(pretrained_model(), NUM_CLASSES, SIZE)
    assert np.abs(default(batch()[0])["logits_sup"]).max() > 0


def test_selector_that_does_not_fit_the_head_is_refused():
    with pytest.raises(ValueError, match="ft_proj_selector"):
        build_classifier(pretrained_model(num_proj_layers=2), NUM_CLASSES, SIZE, ft_proj_selector=3)


def test_unbuilt_pretrained_model_is_refused_with_the_fix():
    unbuilt = SimCLRModel(ResNet(depth=18, width_multiplier=0.125, cifar_stem=True),
                          ProjectionHead(num_layers=2, out_dim=8))
    with pytest.raises(ValueError, match=r"not built yet.*pretrained\(tf.zeros\(\[1, 16, 16, 3\]\)\)"):
        build_classifier(unbuilt, NUM_CLASSES, SIZE)


def test_fit_learns_and_evaluate_reports_top_k():
    classifier = build_classifier(pretrained_model(), NUM_CLASSES, SIZE, ft_proj_selector=1)
    classifier.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    images, labels = batch(size=16)
    losses = [classifier.train_on_batch(images, labels, return_dict=True)["supervised_loss"]
              for _ in range(15)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    result = classifier.evaluate(images, labels, batch_size=8, return_dict=True, verbose=0)
    assert set(result) == {"supervised_loss", "top_1_accuracy", "top_5_accuracy"}
    assert result["top_5_accuracy"] == 1.0  # 5 classes: the true one is always in the top 5
    assert result["top_1_accuracy"] > 1.0 / NUM_CLASSES


def test_config_and_save_load(tmp_path):
    classifier = build_classifier(pretrained_model(), NUM_CLASSES, SIZE, ft_proj_selector=2,
                                  fine_tune_after_block=2, zero_init_logits_layer=True)
    layer_checks.perturb_weights(classifier, 3)
    layer_checks.assert_config_covers_init(classifier)
    loaded = layer_checks.assert_save_load_equal(classifier, batch()[0], str(tmp_path / "c.keras"),
                                                 atol=1e-5)
    assert isinstance(loaded, SimCLRClassifier)
    # Freezing survives the round trip.
    assert not loaded.encoder.block_groups[1].trainable and loaded.encoder.block_groups[2].trainable
