"""Variable names of the reference SimCLR (google-research/simclr) checkpoints, and the architecture they
describe.

TF2 (`tf2/run.py`) writes `tf.train.Checkpoint(model=model, ...)` with tf.keras 2, so every variable of its
`Model` is stored under an object path such as
`model/resnet_model/block_groups/0/layers/0/conv2d_bn_layers/1/bn/gamma/.ATTRIBUTES/VARIABLE_VALUE`;
`reference_weight_names(model)` gives that path (without the suffix) for every weight of a simclr_tf
`SimCLRModel`. TF1 (top-level run.py) names variables by scope and creation counter
(`base_model/conv2d_12/kernel`); `reference_tf1_weight_names(model)` gives those. `detect_architecture(shape_map)`
reads depth, width, heads... back from a checkpoint's names and shapes.

All names were listed from the reference models themselves, built outside this project (tf.keras 2 and
tf.compat.v1.layers from the tf_keras package; see the "how" of tests/data/reference_tf*_*.json). The TF2
squeeze-excite names were checked the same way (se_ratio=0.25) but are not kept as a golden file; TF1
squeeze-excite names are not mapped.
"""
import re

from simclr_tf.models.resnet import RESNET_SPECS
from simclr_tf.models.resnet_blocks import BasicBlock

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
REFERENCE_MIN_SK_DIM = 32
DEFAULT_SK_RATIO = 0.0625  # the only ratio of the released SimCLRv2 models
_BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


def _bn(prefix, bn):
    """(key, variable) of a batch norm in the reference's creation order; beta is absent when not centred."""
    for name in _BN_VARIABLES:
        variable = getattr(bn, name, None)
        if variable is not None:
            yield f"{prefix}/{name}", variable


def _conv(prefix, conv):
    yield f"{prefix}/kernel", conv.kernel


def _stem(prefix, stem):
    # Reference list: [conv, identity, bn(, max-pool, identity)] or, ResNet-D, [conv, bn, conv, bn, conv,
    # identity, bn, max-pool, identity].
    conv_indices, bn_indices = ((0,), (2,)) if len(stem.convs) == 1 else ((0, 2, 4), (1, 3, 6))
    layers = [(i, "conv2d", _conv, conv) for i, conv in zip(conv_indices, stem.convs)]
    layers += [(i, "bn", _bn, bn) for i, bn in zip(bn_indices, stem.bns)]
    for index, name, walk, layer in sorted(layers, key=lambda item: item[0]):
        yield from walk(f"{prefix}/{index}/{name}", layer)


def _shortcut(prefix, shortcut):
    # ResNet-D: [fixed padding (strided only), avg-pool, conv, bn]; else [conv, bn].
    offset = (2 if shortcut.strides > 1 else 1) if shortcut.resnet_d else 0
    yield from _conv(f"{prefix}/{offset}/conv2d", shortcut.conv)
    yield from _bn(f"{prefix}/{offset + 1}/bn", shortcut.bn)


def _squeeze_excite(prefix, se):
    for name, conv in (("se_reduce", se.reduce), ("se_expand", se.expand)):
        yield f"{prefix}/{name}/kernel", conv.kernel
        yield f"{prefix}/{name}/bias", conv.bias


def _basic_block(prefix, block):
    main = f"{prefix}/conv2d_bn_layers"
    yield from _conv(f"{main}/0/conv2d", block.conv_1)
    yield from _bn(f"{main}/1/bn", block.bn_1)
    yield from _conv(f"{main}/2/conv2d", block.conv_2)
    yield from _bn(f"{main}/3/bn", block.bn_2)
    if block.shortcut is not None:
        yield from _shortcut(f"{prefix}/shortcut_layers", block.shortcut)
    if block.squeeze_excite is not None:
        yield from _squeeze_excite(f"{prefix}/se_layer", block.squeeze_excite)


def _bottleneck_block(prefix, block):
    if block.shortcut is not None:
        yield from _shortcut(f"{prefix}/projection_layers", block.shortcut)
    # Reference list: conv, bn, dropblock, (sk | conv, bn), dropblock, conv, bn, dropblock(, se).
    main = f"{prefix}/conv_relu_dropblock_layers"
    yield from _conv(f"{main}/0/conv2d", block.conv_1)
    yield from _bn(f"{main}/1/bn", block.bn_1)
    sk = block.selective_kernel
    if sk is not None:
        yield from _conv(f"{main}/3/conv2d_fixed_padding/conv2d", sk.branches_conv)
        yield from _bn(f"{main}/3/batch_norm_relu/bn", sk.branches_bn)
        yield from _conv(f"{main}/3/conv2d_0", sk.attention_reduce)
        yield from _bn(f"{main}/3/batch_norm_relu_1/bn", sk.attention_bn)
        yield from _conv(f"{main}/3/conv2d_1", sk.attention_expand)
        last = 5
    else:
        yield from _conv(f"{main}/3/conv2d", block.conv_2)
        yield from _bn(f"{main}/4/bn", block.bn_2)
        last = 6
    yield from _conv(f"{main}/{last}/conv2d", block.conv_3)
    yield from _bn(f"{main}/{last + 1}/bn", block.bn_3)
    if block.squeeze_excite is not None:
        yield from _squeeze_excite(f"{main}/{last + 3}", block.squeeze_excite)


def _resnet(prefix, encoder):
    yield from _stem(f"{prefix}/initial_conv_relu_max_pool", encoder.stem)
    for g, group in enumerate(encoder.block_groups):
        for i, block in enumerate(group.blocks):
            block_prefix = f"{prefix}/block_groups/{g}/layers/{i}"
            if isinstance(block, BasicBlock):
                yield from _basic_block(block_prefix, block)
            else:
                yield from _bottleneck_block(block_prefix, block)


def _projection_head(prefix, head):
    for j, layer in enumerate(head.linear_layers):
        # The reference's LinearLayer makes its BN in __init__ and its dense layer in build().
        yield from _bn(f"{prefix}/linear_layers/{j}/bn_relu/bn", layer.bn)
        yield f"{prefix}/linear_layers/{j}/dense/kernel", layer.dense.kernel


def _supervised_head(prefix, head):
    yield f"{prefix}/linear_layer/dense/kernel", head.linear_layer.dense.kernel
    yield f"{prefix}/linear_layer/dense/bias", head.linear_layer.dense.bias


def reference_weight_names(model, prefix="model"):
    """[(reference key without VALUE_SUFFIX, variable, part)] for every weight of a built `SimCLRModel`.

    `part` is the reference sub-model holding it ("resnet_model", "_projection_head", "supervised_head");
    the order is the reference's creation order (tf.keras 2 lists a part's trainable weights in that order,
    then its non-trainable ones).
    """
    parts = [("resnet_model", _resnet, model.encoder), ("_projection_head", _projection_head,
                                                          model.projection_head)]
    if model.supervised_head is not None:
        parts.append(("supervised_head", _supervised_head, model.supervised_head))
    return [(key, variable, part) for part, walk, layer in parts for key, variable in walk(f"{prefix}/{part}",
                                                                                         layer)]


def strip_suffix(key):
    return key[:-len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key


def _find(pattern, shapes):
    """{match groups: shape} of the keys matching `pattern` (a regex on suffix-free keys)."""
    found = {}
    for key, shape in shapes.items():
        match = re.search(pattern, key)
        if match:
            found[match.groups()] = list(shape)
    return found


def _nice(number):
    return int(number) if float(number).is_integer() else float(number)


def detect_architecture(shape_map):
    """The reference configuration described by a checkpoint's {key: shape}: TF2 checkpoint, TF2 SavedModel
    variables or TF1 checkpoint / TF-Hub module variables (see `detect_tf2_architecture`).
    """
    if is_tf1_checkpoint(shape_map):
        return detect_tf1_architecture(shape_map)
    if any(strip_suffix(key).startswith("trainable_variables_list/") for key in shape_map):
        return detect_saved_model_architecture(shape_map)
    return detect_tf2_architecture(shape_map)


def detect_tf2_architecture(shape_map):
    """The reference configuration described by a TF2 checkpoint's {key: shape} (keys with or without suffix).

    Returns a dict: depth, width_multiplier, sk_ratio, se_ratio, cifar_stem, proj_head_mode,
    num_proj_layers, proj_out_dim, num_classes, and `assumed`: the names of the values that names and shapes
    cannot tell exactly (sk_ratio when no attention layer is wider than the reference's minimum of 32: the
    released 0.0625 is assumed; se_ratio: read back from rounded widths).
    Raises ValueError when the names are not those of a reference SimCLR tf2 model.
    """
    shapes = {strip_suffix(key): shape for key, shape in shape_map.items() if "OPTIMIZER_SLOT" not in key}
    blocks = _find(r"resnet_model/block_groups/(\d+)/layers/(\d+)/", shapes)
    if not blocks:
        raise ValueError("No 'resnet_model/block_groups/...' variable in this checkpoint: it is not a "
                         "checkpoint of the reference SimCLR tf2 model (tf.train.Checkpoint(model=...)).")
    groups = sorted({int(g) for g, _ in blocks})
    blocks_per_group = tuple(len({i for g2, i in blocks if int(g2) == g}) for g in groups)
    bottleneck = any("conv_relu_dropblock_layers" in key for key in shapes)
    matches = [depth for depth, spec in RESNET_SPECS.items() if spec == (bottleneck, blocks_per_group)]
    if not matches:
        raise ValueError(f"Blocks per group {blocks_per_group} (bottleneck={bottleneck}) match no ResNet depth "
                         f"of {sorted(RESNET_SPECS)}.")
    stem_convs = _find(r"resnet_model/initial_conv_relu_max_pool/(\d+)/conv2d/kernel$", shapes)
    stem_kernels = [stem_convs[k] for k in sorted(stem_convs, key=lambda k: int(k[0]))]
    if not stem_kernels:
        raise ValueError("No stem convolution 'resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel' found.")
    cifar_stem = len(stem_kernels) == 1 and stem_kernels[0][0] == 3
    assumed = []
    sk_ratio = 0.0
    sk_reduce = _find(r"/conv_relu_dropblock_layers/\d+/conv2d_0/kernel$", shapes)
    resnet_d_shortcut = any(re.search(r"/(shortcut|projection)_layers/[12]/conv2d/kernel$", key) for key in shapes)
    if sk_reduce:
        ratios = [shape[-1] / (shape[2]) for shape in sk_reduce.values() if shape[-1] > REFERENCE_MIN_SK_DIM]
        sk_ratio = max(ratios) if ratios else DEFAULT_SK_RATIO
        if not ratios:
            assumed.append("sk_ratio")
    elif resnet_d_shortcut or len(stem_kernels) == 3:
        sk_ratio = DEFAULT_SK_RATIO  # ResNet-D without selective kernels: basic blocks with sk_ratio > 0
        assumed.append("sk_ratio")
    se_reduce = _find(r"resnet_model/block_groups/(\d+)/layers/0/.*se_reduce/kernel$", shapes)
    se_ratio = 0.0
    if se_reduce:
        # The reduce width is max(1, int(filters * se_ratio)), filters being the block's (not expanded) width.
        last = se_reduce[max(se_reduce)]
        filters = last[2] // 4 if bottleneck else last[2]
        se_ratio = last[-1] / filters
        assumed.append("se_ratio")
    proj = _find(r"_projection_head/linear_layers/(\d+)/dense/kernel$", shapes)
    proj_kernels = [proj[k] for k in sorted(proj, key=lambda k: int(k[0]))]
    supervised = _find(r"supervised_head/linear_layer/dense/(kernel)$", shapes)
    return {
            "depth": matches[0],
            "width_multiplier": _nice(stem_kernels[-1][-1] / 64),
            "sk_ratio": sk_ratio,
            "se_ratio": se_ratio,
            "cifar_stem": cifar_stem,
            "proj_head_mode": "nonlinear" if proj_kernels else "none",
            "num_proj_layers": len(proj_kernels),
            "proj_out_dim": proj_kernels[-1][-1] if proj_kernels else 0,
            "num_classes": supervised[("kernel",)][-1] if supervised else 0,
            "assumed": assumed,
    }


def detect_saved_model_architecture(shape_map):
    """The architecture of a reference SavedModel, whose variables are stored by index only.

    Reads the ordered shapes of `trainable_variables_list/<i>` (the tf.keras 2 order: encoder, projection
    head, supervised head). Squeeze-excite is not detected here (no released model uses it).
    """
    trainable = {}
    for key, shape in shape_map.items():
        match = re.match(r"^trainable_variables_list/(\d+)$", strip_suffix(key))
        if match:
            trainable[int(match.group(1))] = list(shape)
    if not trainable or sorted(trainable) != list(range(len(trainable))):
        raise ValueError("No complete 'trainable_variables_list/<i>' in these SavedModel variables: they are "
                         "not those of a reference SimCLR tf2 SavedModel (tf2/run.py build_saved_model).")
    return _architecture_from_ordered_shapes([trainable[i] for i in range(len(trainable))])


def _architecture_from_ordered_shapes(shapes):
    """Architecture from the shapes of the trainable weights in creation order (encoder, heads).

    Uses only the order of the convolution kernels, of the dense kernels, and whether the last weight is a
    bias (the supervised head's), so the TF1 and tf.keras 2 orders both work.
    """
    assumed = []
    num_classes = shapes[-1][0] if len(shapes[-1]) == 1 else 0
    dense = [shape for shape in shapes if len(shape) == 2]
    proj_kernels = dense[:-1] if num_classes else dense
    kernels = [shape for shape in shapes if len(shape) == 4]
    first = kernels[0]
    resnet_d = (len(kernels) > 2 and first[0] == 3 and kernels[1] == [3, 3, first[3], first[3]]
                and kernels[2][:3] == [3, 3, first[3]] and kernels[2][3] == 2 * first[3])
    cifar_stem = first[0] == 3 and not resnet_d
    stem_out = kernels[2][3] if resnet_d else first[3]
    width = stem_out / 64
    feature_dim = kernels[-1][3]
    bottleneck = feature_dim == 4 * round(512 * width)
    per_block = 3 if bottleneck else 2
    body = len(kernels) - (3 if resnet_d else 1) - 4  # minus the stem and the four projection shortcuts
    depth = None
    sk_ratio = DEFAULT_SK_RATIO if resnet_d else 0.0  # a ResNet-D stem comes only with sk_ratio > 0
    measured_sk_ratio = False
    for candidate, (is_bottleneck, blocks) in RESNET_SPECS.items():
        if is_bottleneck != bottleneck:
            continue
        if body == sum(blocks) * per_block:
            depth = candidate
        elif bottleneck and body == sum(blocks) * 5:  # selective kernels: 3 convs instead of 1
            depth = candidate
            # SK: branches [3, 3, f, 2f], attention reduce [1, 1, f, mid], expand [1, 1, mid, 2f].
            reduce = [kernels[i + 1] for i in range(len(kernels) - 2)
                      if kernels[i][:2] == [3, 3] and kernels[i + 1][:2] == [1, 1]
                      and kernels[i + 2][:2] == [1, 1] and kernels[i][3] == kernels[i + 2][3]
                      and kernels[i + 1][2] * 2 == kernels[i][3]]
            ratios = [shape[3] / shape[2] for shape in reduce if shape[3] > REFERENCE_MIN_SK_DIM]
            sk_ratio = max(ratios) if ratios else DEFAULT_SK_RATIO
            measured_sk_ratio = bool(ratios)
    if depth is None:
        raise ValueError(f"{len(kernels)} convolution kernels (bottleneck={bottleneck}) match no ResNet depth of "
                         f"{sorted(RESNET_SPECS)} with or without selective kernels.")
    if sk_ratio and not measured_sk_ratio:
        assumed.append("sk_ratio")
    return {
            "depth": depth,
            "width_multiplier": _nice(width),
            "sk_ratio": sk_ratio,
            "se_ratio": 0.0,
            "cifar_stem": cifar_stem,
            "proj_head_mode": "nonlinear" if proj_kernels else "none",
            "num_proj_layers": len(proj_kernels),
            "proj_out_dim": proj_kernels[-1][-1] if proj_kernels else 0,
            "num_classes": num_classes,
            "assumed": assumed,
    }


# TF1 (the reference's top-level run.py, tf.compat.v1.layers): variables are named by graph scope and a
# per-type counter in creation order: base_model/conv2d_<n>/kernel, base_model/batch_normalization_<n>/...,
# head_contrastive/nl_<j>/{dense,batch_normalization}/..., head_supervised/linear_layer/dense/{kernel,bias}.
_TF1_CONV = re.compile(r"^base_model/conv2d(?:_(\d+))?/kernel$")


def _tf1_encoder_layers(encoder):
    """("conv" | "bn", layer) of the encoder in the TF1 reference's creation order (shortcut first)."""
    for conv, bn in zip(encoder.stem.convs, encoder.stem.bns):
        yield "conv", conv
        yield "bn", bn
    for group in encoder.block_groups:
        for block in group.blocks:
            if block.squeeze_excite is not None:
                raise NotImplementedError("TF1 names of squeeze-excite layers are not mapped (no released "
                                          "checkpoint uses them): load a model with se_ratio=0.")
            if block.shortcut is not None:
                yield "conv", block.shortcut.conv
                yield "bn", block.shortcut.bn
            yield "conv", block.conv_1
            yield "bn", block.bn_1
            sk = getattr(block, "selective_kernel", None)
            if sk is not None:
                yield from (("conv", sk.branches_conv), ("bn", sk.branches_bn), ("conv", sk.attention_reduce),
                            ("bn", sk.attention_bn), ("conv", sk.attention_expand))
            else:
                yield "conv", block.conv_2
                yield "bn", block.bn_2
            if not isinstance(block, BasicBlock):
                yield "conv", block.conv_3
                yield "bn", block.bn_3


def reference_tf1_weight_names(model):
    """[(TF1 checkpoint key, variable, part)] for every weight of a built `SimCLRModel` (see above)."""
    names = []
    counters = {"conv": 0, "bn": 0}
    for kind, layer in _tf1_encoder_layers(model.encoder):
        number = counters[kind]
        counters[kind] += 1
        scope = f"base_model/{'conv2d' if kind == 'conv' else 'batch_normalization'}"
        scope += f"_{number}" if number else ""
        items = [(f"{scope}/kernel", layer.kernel)] if kind == "conv" else list(_bn(scope, layer))
        names += [(key, variable, "base_model") for key, variable in items]
    head = model.projection_head
    for j, layer in enumerate(head.linear_layers):
        scope = f"head_contrastive/{'l' if head.mode == 'linear' else 'nl'}_{j}"
        names.append((f"{scope}/dense/kernel", layer.dense.kernel, "head_contrastive"))
        names += [(key, variable, "head_contrastive") for key, variable in _bn(f"{scope}/batch_normalization",
                                                                               layer.bn)]
    if model.supervised_head is not None:
        dense = model.supervised_head.linear_layer.dense
        names += [("head_supervised/linear_layer/dense/kernel", dense.kernel, "head_supervised"),
                  ("head_supervised/linear_layer/dense/bias", dense.bias, "head_supervised")]
    return names


def is_tf1_checkpoint(shape_map):
    return any(_TF1_CONV.match(key) for key in shape_map)


def detect_tf1_architecture(shape_map):
    """The architecture of a TF1 reference checkpoint (or TF-Hub module variables) from its names and shapes."""
    convs = {}
    for key, shape in shape_map.items():
        match = _TF1_CONV.match(key)
        if match:
            convs[int(match.group(1) or 0)] = list(shape)
    if not convs:
        raise ValueError("No 'base_model/conv2d/kernel' in this checkpoint: it is not a TF1 reference SimCLR "
                         "checkpoint.")
    shapes = [convs[i] for i in sorted(convs)]
    proj = _find(r"^head_contrastive/n?l_(\d+)/dense/kernel$", shape_map)
    shapes += [proj[k] for k in sorted(proj, key=lambda k: int(k[0]))]
    if "head_supervised/linear_layer/dense/kernel" in shape_map:
        shapes += [list(shape_map["head_supervised/linear_layer/dense/kernel"]),
                   list(shape_map["head_supervised/linear_layer/dense/bias"])]
    architecture = _architecture_from_ordered_shapes(shapes)
    if any(key.startswith("head_contrastive/l_0/") for key in shape_map):
        architecture["proj_head_mode"] = "linear"  # same computation as one nonlinear layer, other names
    return architecture
