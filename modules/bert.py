"""A BERT encoder in tf_keras, shaped like Hugging Face's `BertModel`.

Used for the offline default text backbone (all-MiniLM-L6-v2, weights loaded
by modules/pretrained_weights.py) and for any BERT checkpoint with the same
layout. The encoder maps `input_word_ids` and `input_mask` [N, L] to the last
hidden states [N, L, H]; `MaskedMeanPooling` averages them over the real
tokens into one vector per text, as sentence-transformers does. Each
transformer block is one Keras layer, so fine-tuning unfreezes the top blocks
by counting layers from the top.
"""

import dataclasses
import math

import tensorflow as tf
import tf_keras as keras

WORD_IDS, MASK = 'input_word_ids', 'input_mask'


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture fields of a Hugging Face BERT `config.json`."""

  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_json_dict(cls, values: dict) -> 'BertConfig':
    if values.get('hidden_act', 'gelu') != 'gelu':
      raise ValueError(
        f'Only gelu BERT encoders are supported, got {values["hidden_act"]!r}.'
      )
    if values.get('position_embedding_type', 'absolute') != 'absolute':
      raise ValueError('Only absolute position embeddings are supported.')
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


class Embeddings(keras.layers.Layer):
  """Word + position + token-type (always 0) embeddings, then LayerNorm."""

  def __init__(self, config: BertConfig, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.word_embeddings = keras.layers.Embedding(
      config.vocab_size, config.hidden_size, name='word_embeddings'
    )
    self.position_embeddings = keras.layers.Embedding(
      config.max_position_embeddings,
      config.hidden_size,
      name='position_embeddings',
    )
    self.token_type_embeddings = keras.layers.Embedding(
      config.type_vocab_size, config.hidden_size, name='token_type_embeddings'
    )
    self.layer_norm = keras.layers.LayerNormalization(
      epsilon=config.layer_norm_eps, name='layer_norm'
    )

  def call(self, word_ids):
    positions = tf.range(tf.shape(word_ids)[1])
    x = (
      self.word_embeddings(word_ids)
      + self.position_embeddings(positions)[tf.newaxis]
      + self.token_type_embeddings(tf.zeros_like(word_ids))
    )
    return self.layer_norm(x)

  def get_config(self):
    return {**super().get_config(), **dataclasses.asdict(self.config)}


class TransformerBlock(keras.layers.Layer):
  """One post-LayerNorm BERT layer: self-attention, then the feed-forward."""

  def __init__(self, config: BertConfig, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    hidden, heads = config.hidden_size, config.num_attention_heads
    if hidden % heads:
      raise ValueError(
        f'hidden_size {hidden} is not a multiple of '
        f'num_attention_heads {heads}.'
      )
    self.head_size = hidden // heads

    def dense(units, name, activation=None):
      return keras.layers.Dense(units, activation=activation, name=name)

    self.query = dense(hidden, 'query')
    self.key = dense(hidden, 'key')
    self.value = dense(hidden, 'value')
    self.attention_output = dense(hidden, 'attention_output')
    self.attention_norm = keras.layers.LayerNormalization(
      epsilon=config.layer_norm_eps, name='attention_norm'
    )
    self.intermediate = dense(
      config.intermediate_size,
      'intermediate',
      lambda x: keras.activations.gelu(x, approximate=False),
    )
    self.output_dense = dense(hidden, 'output')
    self.output_norm = keras.layers.LayerNormalization(
      epsilon=config.layer_norm_eps, name='output_norm'
    )

  def _heads(self, x):
    """[N, L, H] -> [N, heads, L, head_size]."""
    batch, length = tf.shape(x)[0], tf.shape(x)[1]
    x = tf.reshape(
      x, [batch, length, self.config.num_attention_heads, self.head_size]
    )
    return tf.transpose(x, [0, 2, 1, 3])

  def call(self, hidden, mask):
    q, k, v = (
      self._heads(layer(hidden)) for layer in (self.query, self.key, self.value)
    )
    scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.head_size)
    # Padding keys get the lowest float, as in Hugging Face's BertModel.
    blocked = (1.0 - tf.cast(mask, scores.dtype)) * scores.dtype.min
    probs = tf.nn.softmax(scores + blocked[:, tf.newaxis, tf.newaxis, :])
    context = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])
    context = tf.reshape(context, tf.shape(hidden))
    hidden = self.attention_norm(hidden + self.attention_output(context))
    return self.output_norm(
      hidden + self.output_dense(self.intermediate(hidden))
    )

  def get_config(self):
    return {**super().get_config(), **dataclasses.asdict(self.config)}


def build_encoder(
  config: BertConfig, max_length: int, name: str = 'bert_encoder'
) -> keras.Model:
  """{input_word_ids, input_mask} int [N, max_length] -> hidden [N, L, H]."""
  if max_length > config.max_position_embeddings:
    raise ValueError(
      f"max_length {max_length} exceeds the encoder's "
      f'{config.max_position_embeddings} positions.'
    )
  word_ids = keras.Input((max_length,), dtype=tf.int64, name=WORD_IDS)
  mask = keras.Input((max_length,), dtype=tf.int64, name=MASK)
  hidden = Embeddings(config, name='embeddings')(word_ids)
  for i in range(config.num_hidden_layers):
    hidden = TransformerBlock(config, name=f'layer_{i}')(hidden, mask)
  return keras.Model({WORD_IDS: word_ids, MASK: mask}, hidden, name=name)


class MaskedMeanPooling(keras.layers.Layer):
  """`masked_mean` as a layer: (hidden [N, L, H], mask [N, L]) -> [N, H]."""

  def call(self, hidden, mask):
    return masked_mean(hidden, mask)


def masked_mean(hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Mean of the hidden states over the unmasked tokens: [N, L, H] -> [N, H]."""
  weights = tf.cast(mask, hidden.dtype)[:, :, tf.newaxis]
  return tf.reduce_sum(hidden * weights, axis=1) / tf.maximum(
    tf.reduce_sum(weights, axis=1), 1e-9
  )
