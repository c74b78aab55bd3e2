"""A plain NumPy BERT forward pass straight from a safetensors checkpoint.

The reference for tests/test_text_encoder.py: written from Hugging Face's
BertModel (modeling_bert.py) and sentence-transformers' mean pooling,
sharing no code with modules/bert.py or modules/pretrained_weights.py.
Float64 throughout.
"""

import json
import os

import numpy as np
from safetensors import numpy as safetensors_numpy
from scipy import special


class NumpyMiniLM:
  """all-MiniLM-L6-v2 as sentence-transformers computes it (CPU, float64)."""

  def __init__(self, model_dir: str):
    with open(os.path.join(model_dir, 'config.json')) as f:
      self.config = json.load(f)
    self.w = {
      k: v.astype(np.float64)
      for k, v in safetensors_numpy.load_file(
        os.path.join(model_dir, 'model.safetensors')
      ).items()
    }

  def _layer_norm(self, x, name):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    x = (x - mean) / np.sqrt(var + self.config['layer_norm_eps'])
    return x * self.w[f'{name}.weight'] + self.w[f'{name}.bias']

  def _linear(self, x, name):
    return x @ self.w[f'{name}.weight'].T + self.w[f'{name}.bias']

  def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Last hidden states [N, L, H] of BertModel for int ids and mask."""
    n, length = ids.shape
    heads = self.config['num_attention_heads']
    size = self.config['hidden_size'] // heads
    x = (
      self.w['embeddings.word_embeddings.weight'][ids]
      + self.w['embeddings.position_embeddings.weight'][np.arange(length)]
      + self.w['embeddings.token_type_embeddings.weight'][0]
    )
    x = self._layer_norm(x, 'embeddings.LayerNorm')
    bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float64).min)
    for i in range(self.config['num_hidden_layers']):
      p = f'encoder.layer.{i}'

      def split(t):
        return t.reshape(n, length, heads, size).transpose(0, 2, 1, 3)

      q = split(self._linear(x, f'{p}.attention.self.query'))
      k = split(self._linear(x, f'{p}.attention.self.key'))
      v = split(self._linear(x, f'{p}.attention.self.value'))
      scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(size) + bias
      probs = special.softmax(scores, axis=-1)
      context = (probs @ v).transpose(0, 2, 1, 3).reshape(n, length, -1)
      x = self._layer_norm(
        x + self._linear(context, f'{p}.attention.output.dense'),
        f'{p}.attention.output.LayerNorm',
      )
      h = self._linear(x, f'{p}.intermediate.dense')
      h = 0.5 * h * (1.0 + special.erf(h / np.sqrt(2.0)))  # Exact GELU.
      x = self._layer_norm(
        x + self._linear(h, f'{p}.output.dense'), f'{p}.output.LayerNorm'
      )
    return x

  def sentence_embeddings(self, ids, mask) -> np.ndarray:
    """Mean pooling over real tokens, then L2 normalization."""
    hidden = self.hidden_states(ids, mask)
    m = mask[:, :, None].astype(np.float64)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(
      np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12
    )
