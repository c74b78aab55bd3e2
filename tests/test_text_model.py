"""Text and image+text classifiers: backbones, phases, per-tower unfreezing.

On a small `bert:<dir>` checkpoint: phase 1 trains only the head (fusion: on
cached embeddings), phase 2 only each tower's unfrozen top layers (BatchNorm
untouched); SavedModel text encoders of both kinds (string input, the TF Hub
BERT interface).
"""

import json

import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy
import tensorflow as tf
import tf_keras as keras

from modules import backbones
from modules import bert
from modules import embedding_cache
from modules import features
from modules import model as model_lib
from modules import phases
from modules import tokenization

MAX_LENGTH, IMAGE_SIZE = 8, 32
_WORDS = ['good', 'bad', 'film', 'plot', 'the', 'a', 'was', 'very']
_TINY = {
  'vocab_size': 5 + len(_WORDS),
  'hidden_size': 16,
  'num_hidden_layers': 3,
  'num_attention_heads': 2,
  'intermediate_size': 32,
  'max_position_embeddings': 16,
  'type_vocab_size': 2,
  'layer_norm_eps': 1e-12,
  'hidden_act': 'gelu',
}


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory):
  """A small random BERT checkpoint in Hugging Face's layout: bert:<dir>."""
  model_dir = tmp_path_factory.mktemp('tiny_bert')
  tokens = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + _WORDS
  (model_dir / 'vocab.txt').write_text('\n'.join(tokens) + '\n')
  (model_dir / 'config.json').write_text(json.dumps(_TINY))
  rng = np.random.default_rng(0)
  h, i = _TINY['hidden_size'], _TINY['intermediate_size']
  shapes = {
    'embeddings.word_embeddings.weight': (_TINY['vocab_size'], h),
    'embeddings.position_embeddings.weight': (16, h),
    'embeddings.token_type_embeddings.weight': (2, h),
    'embeddings.LayerNorm.weight': (h,),
    'embeddings.LayerNorm.bias': (h,),
  }
  for n in range(_TINY['num_hidden_layers']):
    p = f'encoder.layer.{n}'
    for name in (
      'attention.self.query',
      'attention.self.key',
      'attention.self.value',
      'attention.output.dense',
    ):
      shapes.update({f'{p}.{name}.weight': (h, h), f'{p}.{name}.bias': (h,)})
    shapes.update(
      {
        f'{p}.intermediate.dense.weight': (i, h),
        f'{p}.intermediate.dense.bias': (i,),
        f'{p}.output.dense.weight': (h, i),
        f'{p}.output.dense.bias': (h,),
      }
    )
    for norm in ('attention.output.LayerNorm', 'output.LayerNorm'):
      shapes.update({f'{p}.{norm}.weight': (h,), f'{p}.{norm}.bias': (h,)})
  tensors = {
    k: rng.normal(0, 0.5, s).astype('float32') for k, s in shapes.items()
  }
  safetensors_numpy.save_file(tensors, str(model_dir / 'model.safetensors'))
  return f'bert:{model_dir}', tensors


def _texts(n=48, seed=0):
  """Two classes told apart by one word: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  texts = [
    ' '.join(rng.choice(_WORDS[2:], 3)) + (' good' if y else ' bad')
    for y in labels
  ]
  return texts, labels.astype('int64')


def _token_dataset(vocab, images=False, batch=16):
  texts, labels = _texts()
  ids, mask = tokenization.tokenize(tf.constant(texts), vocab, MAX_LENGTH)
  inputs = {features.TOKEN_IDS_XF: ids, features.TOKEN_MASK_XF: mask}
  if images:  # The image carries the label too (brightness).
    inputs[features.IMAGE_XF] = tf.constant(
      np.random.default_rng(1).uniform(
        0, 100, (len(labels), IMAGE_SIZE, IMAGE_SIZE, 3)
      )
      + 150 * labels[:, None, None, None],
      tf.float32,
    )
  return tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(batch)


def _snapshot(model):
  return {w.name: w.numpy().copy() for w in model.weights}


def _changed(before, after):
  return {n for n in before if not np.array_equal(before[n], after[n])}


def test_bert_dir_checkpoint_is_loaded(tiny_bert):
  spec, tensors = tiny_bert
  backbone = backbones.build_text_backbone(spec, MAX_LENGTH, 'offline')
  embeddings = backbone.network.get_layer('embeddings')
  np.testing.assert_array_equal(
    embeddings.word_embeddings.embeddings,
    tensors['embeddings.word_embeddings.weight'],
  )
  top = backbone.network.get_layer('layer_2')
  np.testing.assert_array_equal(
    top.query.kernel, tensors['encoder.layer.2.attention.self.query.weight'].T
  )
  assert [l.name for l in backbone.layers[-2:]] == ['layer_1', 'layer_2']
  random_init = backbones.build_text_backbone(spec, MAX_LENGTH, 'none')
  assert not np.array_equal(
    random_init.network.get_layer('embeddings').word_embeddings.embeddings,
    embeddings.word_embeddings.embeddings,
  )


def test_text_phases_train_head_then_top_blocks(tiny_bert):
  keras.utils.set_random_seed(0)
  backbone = backbones.build_text_backbone(tiny_bert[0], MAX_LENGTH)
  classifier = model_lib.build_text_classifier(backbone, MAX_LENGTH, 2, 0.0)
  data = _token_dataset(backbone.vocab)
  strategy = tf.distribute.get_strategy()
  initial = _snapshot(classifier)
  context = phases.PhaseContext(
    classifier, [backbone], strategy, data, data, phases.FitOptions()
  )
  phase1 = phases.run_phase(context, 'phase1', 3, 1e-2, 0)
  after1 = _snapshot(classifier)
  phase2 = phases.run_phase(context, 'phase2', 2, 1e-3, 1)
  after2 = _snapshot(classifier)

  head = {w.name for w in classifier.get_layer('logits').weights}
  assert _changed(initial, after1) == head
  assert phase2['unfrozen_layers'] == ['layer_2']
  top = {w.name for w in backbone.network.get_layer('layer_2').weights}
  # All of the top block moves (its LayerNorms too), nothing below it.
  assert _changed(after1, after2) == head | top
  for phase in (phase1, phase2):
    assert phase['history']['loss'][-1] < phase['history']['loss'][0]


def test_fusion_per_tower_unfreezing_and_cached_phase1(tiny_bert):
  keras.utils.set_random_seed(0)
  image = backbones.build_backbone('MobileNet', IMAGE_SIZE, 'offline')
  text = backbones.build_text_backbone(tiny_bert[0], MAX_LENGTH)
  classifier = model_lib.build_fusion_classifier(
    image, text, IMAGE_SIZE, MAX_LENGTH, 2, 0.0
  )
  fused = classifier.get_layer(model_lib.FUSION).output
  assert fused.shape[-1] == 1024 + _TINY['hidden_size']
  data = _token_dataset(text.vocab, images=True)
  strategy = tf.distribute.get_strategy()
  initial = _snapshot(classifier)
  context = phases.PhaseContext(
    classifier, [image, text], strategy, data, data, phases.FitOptions()
  )
  phase1 = embedding_cache.run_cached_phase1(
    context,
    epochs=4,
    learning_rate=1e-2,
    batch_size=16,
    seed=0,
  )
  after1 = _snapshot(classifier)
  head = {w.name for w in classifier.get_layer('logits').weights}
  assert _changed(initial, after1) == head
  assert phase1['eval_accuracy'] == pytest.approx(
    phase1['history']['val_accuracy'][-1], abs=1e-6
  )

  # Phase 2, text tower only: the image tower stays as it was.
  phase2 = phases.run_phase(context, 'phase2', 1, 1e-3, [0, 1])
  after2 = _snapshot(classifier)
  top_text = {w.name for w in text.network.get_layer('layer_2').weights}
  assert phase2['unfrozen_layers'] == ['layer_2']
  assert _changed(after1, after2) == head | top_text
  # Both towers: the image tower's top conv layers move, BatchNorm does not.
  phase2 = phases.run_phase(context, 'phase2', 1, 1e-3, [6, 1])
  changed = _changed(after2, _snapshot(classifier))
  image_top = {
    w.name
    for l in image.layers
    if l.name in phase2['unfrozen_layers']
    for w in l.weights
  }
  assert image_top and image_top <= changed
  assert not any('_bn/' in name for name in changed)
  with pytest.raises(ValueError, match='2 backbones'):
    phases.run_phase(context, 'phase2', 0, 1e-3, [1, 1, 1])


class _HashingEncoder(tf.Module):
  """A string-input SavedModel (like the Universal Sentence Encoder)."""

  def __init__(self):
    super().__init__()
    self.table = tf.Variable(
      np.random.default_rng(0).normal(size=(64, 4)).astype('float32')
    )

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def __call__(self, texts):
    words = tf.strings.split(texts)
    ids = tf.strings.to_hash_bucket_fast(words, 64)
    return tf.reduce_mean(tf.gather(self.table, ids), axis=1)


class _HubStyleBert(tf.Module):
  """A TF Hub BERT encoder's interface: vocab_file, do_lower_case, dicts."""

  def __init__(self, vocab_path, encoder):
    super().__init__()
    self.vocab_file = tf.saved_model.Asset(vocab_path)
    self.do_lower_case = tf.Variable(True, trainable=False)
    self.encoder = encoder

  @tf.function(
    input_signature=[
      {
        name: tf.TensorSpec([None, None], tf.int32)
        for name in ('input_word_ids', 'input_mask', 'input_type_ids')
      }
    ]
  )
  def __call__(self, inputs):
    hidden = self.encoder(
      {
        bert.WORD_IDS: tf.cast(inputs['input_word_ids'], tf.int64),
        bert.MASK: tf.cast(inputs['input_mask'], tf.int64),
      }
    )
    return {'sequence_output': hidden, 'pooled_output': hidden[:, 0]}


def test_saved_model_text_encoders(tiny_bert, tmp_path):
  strings_dir = str(tmp_path / 'use_like')
  tf.saved_model.save(_HashingEncoder(), strings_dir)
  backbone = backbones.build_text_backbone(f'file:{strings_dir}', MAX_LENGTH)
  assert backbone.vocab is None
  assert backbones.text_vocabulary(f'file:{strings_dir}') is None
  classifier = model_lib.build_text_classifier(backbone, MAX_LENGTH, 3, 0.0)
  assert list(classifier.input) == [features.TEXT_XF]
  assert classifier({features.TEXT_XF: tf.constant(['a b', 'c'])}).shape == (
    2,
    3,
  )

  spec, _ = tiny_bert
  vocab = backbones.text_vocabulary(spec)
  encoder = backbones.build_text_backbone(spec, MAX_LENGTH).network
  bert_dir = str(tmp_path / 'hub_bert')
  tf.saved_model.save(_HubStyleBert(vocab.path, encoder), bert_dir)
  backbone = backbones.build_text_backbone(f'file:{bert_dir}', MAX_LENGTH)
  hub_vocab = backbones.text_vocabulary(f'file:{bert_dir}')
  assert hub_vocab.lower_case and hub_vocab.tokens() == vocab.tokens()
  classifier = model_lib.build_text_classifier(backbone, MAX_LENGTH, 2, 0.0)
  ids, mask = tokenization.tokenize(
    tf.constant(['the good film']), hub_vocab, MAX_LENGTH
  )
  logits = classifier(
    {features.TOKEN_IDS_XF: ids, features.TOKEN_MASK_XF: mask}
  )
  assert logits.shape == (1, 2)
