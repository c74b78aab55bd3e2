"""Training-time image augmentation, inside the model before the backbone.

`augmentation` settings (all optional; none or an empty mapping: off):
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

from typing import Any, Dict, Optional

import tensorflow as tf
import tf_keras as keras

AUGMENTATION = 'augmentation'
_FLIPS = ('horizontal', 'vertical', 'horizontal_and_vertical')
# Numeric settings: (check, what the check requires).
_RANGES = {
    'rotation': (lambda v: 0 < v <= 0.5, 'in (0, 0.5]'),
    'zoom': (lambda v: 0 < v < 1, 'in (0, 1)'),
    'contrast': (lambda v: 0 < v <= 1, 'in (0, 1]'),
    'crop': (lambda v: 0 < v < 1, 'in (0, 1)'),
}
KEYS = ('crop', 'flip', 'rotation', 'zoom', 'contrast')  # Applied in order.


def validate(settings: Optional[Dict[str, Any]]) -> None:
  """Raises ValueError naming the `augmentation.<key>` that is wrong."""
  if settings is None:
    return
  if not isinstance(settings, dict):
    raise ValueError(f'trainer.augmentation must be a mapping of '
                     f'{list(KEYS)}, got {settings!r}')
  unknown = sorted(set(settings) - set(KEYS))
  if unknown:
    raise ValueError(f'trainer.augmentation: unknown key(s) {unknown}; known '
                     f'keys: {list(KEYS)}')
  if 'flip' in settings and settings['flip'] not in _FLIPS:
    raise ValueError(f'trainer.augmentation.flip must be one of '
                     f'{list(_FLIPS)}, got {settings["flip"]!r}')
  for key, (check, requirement) in _RANGES.items():
    value = settings.get(key)
    if value is None:
      continue
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or
        not check(value)):
      raise ValueError(f'trainer.augmentation.{key} must be a number '
                       f'{requirement}, got {value!r}')


def build(settings: Optional[Dict[str, Any]],
          seed: int) -> Optional['Augmentation']:
  """The augmentation block for `settings`, or None when it is off."""
  validate(settings)
  if not settings:
    return None
  seeds = iter(range(seed, seed + len(KEYS)))
  factories = {
      'crop': lambda v: RandomCropResize(v, seed=next(seeds)),
      'flip': lambda v: keras.layers.RandomFlip(v, seed=next(seeds),
                                                dtype='float32'),
      'rotation': lambda v: keras.layers.RandomRotation(
          v, fill_mode='reflect', seed=next(seeds), dtype='float32'),
      'zoom': lambda v: keras.layers.RandomZoom(
          v, fill_mode='reflect', seed=next(seeds), dtype='float32'),
      'contrast': lambda v: keras.layers.RandomContrast(
          v, seed=next(seeds), dtype='float32'),
  }
  return Augmentation(
      [factories[key](settings[key]) for key in KEYS if key in settings],
      name=AUGMENTATION)


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
        max(1, round(width * self.fraction)), seed=self.seed, dtype='float32')
    self.resize = keras.layers.Resizing(height, width, dtype='float32')
    super().build(input_shape)

  def call(self, images, training=None):
    if not training:
      return tf.identity(images)
    return self.resize(self.crop(images, training=True))

  def get_config(self):
    return {**super().get_config(), 'fraction': self.fraction,
            'seed': self.seed}
