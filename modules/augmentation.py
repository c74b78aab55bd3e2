"""Training-time image augmentation, inside the model before the backbone.

`augmentation` settings (pipeline/settings.py AugmentationConfig; all
optional; none or an empty mapping: off):
  flip: 'horizontal', 'vertical' or 'horizontal_and_vertical'
  rotation: up to this fraction of a full turn either way, in (0, 0.5]
  zoom: zoom in or out by up to this fraction, in (0, 1)
  contrast: contrast factor in [1 - c, 1 + c], c in (0, 1]
  crop: crop a random window of this fraction of each side, in (0, 1), then
    resize back to the input size
The layers act only when the model is called with `training=True` (fit); at
serving and in the Evaluator (`training=False`) the block passes images
through unchanged. They run in float32 under mixed precision.
"""

import dataclasses
from typing import Any, Mapping, Optional, Union

import tensorflow as tf
import tf_keras as keras

from pipeline import settings as settings_lib

AUGMENTATION = 'augmentation'
KEYS = tuple(
  f.name for f in dataclasses.fields(settings_lib.AugmentationConfig)
)  # Applied in order.


def build(
  settings: Union[None, Mapping[str, Any], settings_lib.AugmentationConfig],
  seed: int,
) -> Optional['Augmentation']:
  """The augmentation block for `settings` (or its mapping); None when off.

  Raises:
    ConfigError: naming the `augmentation.<key>` that is wrong.
  """
  if isinstance(settings, Mapping) or settings is None:
    settings = settings_lib.AugmentationConfig.from_dict(settings)
  transforms = settings.items()
  if not transforms:
    return None
  seeds = iter(range(seed, seed + len(KEYS)))
  factories = {
    'crop': lambda v: RandomCropResize(v, seed=next(seeds)),
    'flip': lambda v: keras.layers.RandomFlip(
      v, seed=next(seeds), dtype='float32'
    ),
    'rotation': lambda v: keras.layers.RandomRotation(
      v, fill_mode='reflect', seed=next(seeds), dtype='float32'
    ),
    'zoom': lambda v: keras.layers.RandomZoom(
      v, fill_mode='reflect', seed=next(seeds), dtype='float32'
    ),
    'contrast': lambda v: keras.layers.RandomContrast(
      v, seed=next(seeds), dtype='float32'
    ),
  }
  return Augmentation(
    [factories[key](value) for key, value in transforms], name=AUGMENTATION
  )


class Augmentation(keras.layers.Layer):
  """Applies its random layers only when called with `training=True`.

  Keras' random layers default to training mode when a model is called
  without `training`; this block defaults to the identity instead, so only
  fit (which passes `training=True`) ever sees augmented images.
  """

  def __init__(self, layers, **kwargs):
    kwargs.setdefault('dtype', 'float32')
    super().__init__(**kwargs)
    self.augmentations = list(layers)

  def call(self, images, training=None):
    if not training:
      return tf.identity(images)
    for layer in self.augmentations:
      images = layer(images, training=True)
    return images


class RandomCropResize(keras.layers.Layer):
  """In training, crops a random `fraction` window and resizes it back.

  At inference it is the identity (keras.layers.RandomCrop would resize and
  center-crop there instead).
  """

  def __init__(self, fraction: float, seed: Optional[int] = None, **kwargs):
    kwargs.setdefault('dtype', 'float32')
    super().__init__(**kwargs)
    self.fraction = fraction
    self.seed = seed

  def build(self, input_shape):
    height, width = int(input_shape[1]), int(input_shape[2])
    self.crop = keras.layers.RandomCrop(
      max(1, round(height * self.fraction)),
      max(1, round(width * self.fraction)),
      seed=self.seed,
      dtype='float32',
    )
    self.resize = keras.layers.Resizing(height, width, dtype='float32')
    super().build(input_shape)

  def call(self, images, training=None):
    if not training:
      return tf.identity(images)
    return self.resize(self.crop(images, training=True))

  def get_config(self):
    return {
      **super().get_config(),
      'fraction': self.fraction,
      'seed': self.seed,
    }
