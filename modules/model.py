"""The classifiers, and what the phases (modules/phases.py) set on them.

Image, text and image+text (fusion) classifiers share one head: the pooled
backbone features (for fusion, both towers' concatenated) go through dropout
and a dense layer (float32 even under mixed precision). A phase unfreezes
the top of each backbone (`Unfreeze`: top N layers, from a named layer, or a
fraction) and recompiles. In every phase the backbones are called with
`training=False` and BatchNormalization layers stay frozen, so their moving
statistics never change (small fine-tuning batches would wreck them). All
phases use the same loss on logits; softmax is applied only at serving.
"""

import contextlib
from typing import List, Optional, Sequence, Union

import tf_keras as keras

from modules import backbones
from modules import features
from modules import schedules
from pipeline import settings as settings_lib

HEAD_DROPOUT, LOGITS, FUSION = 'head_dropout', 'logits', 'fusion'
AnyBackbone = Union[backbones.Backbone, backbones.TextBackbone]
# One backbone, or one per tower (image first for fusion).
Towers = Union[AnyBackbone, Sequence[AnyBackbone]]


@contextlib.contextmanager
def precision_policy(name: str):
  """Sets Keras' global dtype policy (e.g. mixed_float16) for the block.

  Build, train and export inside it; the previous policy is restored after,
  so nothing else in the process inherits it.
  """
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def loss() -> keras.losses.Loss:
  """The one loss used in both phases: the head outputs logits."""
  return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_classifier(
  backbone: backbones.Backbone,
  image_size: int,
  num_classes: int,
  dropout: float,
  augmentation: Optional[keras.layers.Layer] = None,
  weight_decay: float = 0.0,
) -> keras.Model:
  """Backbone + dropout + dense head; inputs are [0, 255] float images.

  `augmentation` (modules/augmentation.py) goes before the backbone;
  `weight_decay` is the head kernel's L2 penalty (see `head`).
  """
  inputs = keras.Input((image_size, image_size, 3), name=features.IMAGE_XF)
  features_ = _image_features(backbone, inputs, augmentation)
  return keras.Model(
    inputs,
    head(features_, num_classes, dropout, weight_decay),
    name=f'{backbone.name}_classifier',
  )


def build_text_classifier(
  backbone: backbones.TextBackbone,
  max_length: int,
  num_classes: int,
  dropout: float,
  weight_decay: float = 0.0,
) -> keras.Model:
  """Text encoder + dropout + dense head; inputs are transformed text."""
  inputs = backbone.inputs(max_length)
  return keras.Model(
    inputs,
    head(backbone.embed(inputs), num_classes, dropout, weight_decay),
    name='text_classifier',
  )


def build_fusion_classifier(
  image_backbone: backbones.Backbone,
  text_backbone: backbones.TextBackbone,
  image_size: int,
  max_length: int,
  num_classes: int,
  dropout: float,
  augmentation: Optional[keras.layers.Layer] = None,
  weight_decay: float = 0.0,
) -> keras.Model:
  """Both towers' pooled features, concatenated, + dropout + dense head."""
  image = keras.Input((image_size, image_size, 3), name=features.IMAGE_XF)
  inputs = {features.IMAGE_XF: image, **text_backbone.inputs(max_length)}
  fused = keras.layers.Concatenate(name=FUSION, dtype='float32')(
    [
      _image_features(image_backbone, image, augmentation),
      text_backbone.embed(inputs),
    ]
  )
  return keras.Model(
    inputs,
    head(fused, num_classes, dropout, weight_decay),
    name='image_text_classifier',
  )


def _image_features(backbone: backbones.Backbone, images, augmentation):
  if augmentation is not None:
    images = augmentation(images)
  x = keras.layers.Lambda(backbone.preprocess, name='preprocess')(images)
  return backbone.network(x, training=False)


def head(x, num_classes: int, dropout: float, weight_decay: float = 0.0):
  """Dropout, then the dense logits layer.

  `weight_decay` (lambda) adds lambda * sum(kernel**2) to the training loss,
  the penalty modules/linear_probe.py's closed-form start minimizes too.
  """
  x = keras.layers.Dropout(dropout, name=HEAD_DROPOUT)(x)
  regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
  # float32 logits under mixed precision: a stable softmax and loss.
  return keras.layers.Dense(
    num_classes, name=LOGITS, dtype='float32', kernel_regularizer=regularizer
  )(x)


def as_list(towers: Towers) -> List[AnyBackbone]:
  return list(towers) if isinstance(towers, (list, tuple)) else [towers]


def freeze_backbone(backbone: Towers) -> None:
  for tower in as_list(backbone):
    tower.network.trainable = False


def unfreeze_top(backbone: AnyBackbone, num_layers: int) -> List[str]:
  """Makes the top `num_layers` backbone layers trainable, except BatchNorm."""
  return unfreeze(backbone, settings_lib.Unfreeze(top=num_layers))


def unfreeze(
  backbone: AnyBackbone, setting: Union[int, settings_lib.Unfreeze]
) -> List[str]:
  """Makes the layers `setting` names trainable (an int: the top N), except
  BatchNorm; freezes the rest.

  Returns:
    The names of the layers with weights that are trainable afterwards.
  """
  if isinstance(setting, int):
    setting = settings_lib.Unfreeze(top=setting)
  layers = backbone.layers
  first_trainable = setting.first_trainable(layers)
  if first_trainable >= len(layers):
    freeze_backbone(backbone)
    return []
  backbone.network.trainable = True
  for i, layer in enumerate(layers):
    layer.trainable = i >= first_trainable and not isinstance(
      layer, keras.layers.BatchNormalization
    )
  return [layer.name for layer in layers if layer.trainable and layer.weights]


def compile_for_phase(
  model: keras.Model, learning_rate: schedules.LearningRate
) -> None:
  """(Re)compiles; call inside the strategy scope after changing trainability.

  Under the mixed_float16 policy Keras wraps Adam in a LossScaleOptimizer.
  """
  model.compile(
    optimizer=keras.optimizers.Adam(learning_rate),
    loss=loss(),
    metrics=[keras.metrics.SparseCategoricalAccuracy(name='accuracy')],
  )
