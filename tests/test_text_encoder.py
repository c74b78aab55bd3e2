"""The offline text encoder reproduces all-MiniLM-L6-v2.

Three independent checks, none of which trusts the Keras port:
  * token ids: tests/golden/minilm_token_ids.json was written once with
    Hugging Face `tokenizers` (not installed here) from the package's own
    tokenizer.json; the TF-graph tokenizer must reproduce every id;
  * embeddings: tests/minilm_reference.py, a float64 NumPy forward pass
    straight from the safetensors file, must agree with the Keras encoder;
  * published numbers: sentence-transformers' README prints the cosine
    similarities of three sentences under this model; they must come out.
Also: padding and truncation.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import minilm_reference
from modules import backbones
from modules import bert
from modules import pretrained_weights
from modules import tokenization

_GOLDEN = os.path.join(
  os.path.dirname(__file__), 'golden', 'minilm_token_ids.json'
)
# https://github.com/UKPLab/sentence-transformers README ("Usage"), printed
# for SentenceTransformer("all-MiniLM-L6-v2"): model.similarity(e, e).
_PUBLISHED_SENTENCES = [
  'The weather is lovely today.',
  "It's so sunny outside!",
  'He drove to the stadium.',
]
_PUBLISHED_SIMILARITIES = [
  [1.0000, 0.6660, 0.1046],
  [0.6660, 1.0000, 0.1411],
  [0.1046, 0.1411, 1.0000],
]
MAX_LENGTH = 64


@pytest.fixture(scope='module')
def encoder():
  return backbones.build_text_backbone('MiniLM', MAX_LENGTH, 'offline')


def _embed(encoder, texts):
  """Keras sentence embeddings (mean pooled, L2-normalized), ids and mask."""
  ids, mask = tokenization.tokenize(
    tf.constant(texts), encoder.vocab, MAX_LENGTH
  )
  pooled = encoder.embed({'token_ids_xf': ids, 'token_mask_xf': mask})
  return tf.math.l2_normalize(pooled, axis=1).numpy(), ids, mask


def test_vocab_file_is_the_tokenizer_json_vocabulary():
  model_dir = pretrained_weights.minilm_dir()
  with open(os.path.join(model_dir, 'tokenizer.json'), encoding='utf-8') as f:
    expected = json.load(f)['model']['vocab']
  vocab = backbones.text_vocabulary('MiniLM')
  assert vocab.lower_case
  assert {t: i for i, t in enumerate(vocab.tokens())} == expected


def test_token_ids_match_hugging_face():
  with open(_GOLDEN, encoding='utf-8') as f:
    golden = json.load(f)['sentences']
  texts = [s['text'] for s in golden]
  ids, mask = tokenization.tokenize(
    tf.constant(texts), backbones.text_vocabulary('MiniLM'), 512
  )
  for sentence, row, row_mask in zip(golden, ids.numpy(), mask.numpy()):
    assert list(row[: row_mask.sum()]) == sentence['ids'], sentence['text']
    assert not row[row_mask.sum() :].any()  # [PAD] is 0.


def test_truncation_keeps_cls_and_sep():
  ids, mask = tokenization.tokenize(
    tf.constant(['one two three four five six seven eight nine', 'hi']),
    backbones.text_vocabulary('MiniLM'),
    6,
  )
  assert ids.shape == mask.shape == (2, 6)
  np.testing.assert_array_equal(ids[0], [101, 2028, 2048, 2093, 2176, 102])
  np.testing.assert_array_equal(ids[1], [101, 7632, 102, 0, 0, 0])
  np.testing.assert_array_equal(mask, [[1] * 6, [1, 1, 1, 0, 0, 0]])


def test_keras_matches_numpy_reference(encoder):
  with open(_GOLDEN, encoding='utf-8') as f:
    texts = [s['text'] for s in json.load(f)['sentences']][:11]
  keras_embeddings, ids, mask = _embed(encoder, texts)
  reference = minilm_reference.NumpyMiniLM(pretrained_weights.minilm_dir())
  expected = reference.sentence_embeddings(ids.numpy(), mask.numpy())
  difference = np.abs(keras_embeddings - expected).max()
  print(
    f'max |Keras - NumPy reference| over {len(texts)} sentences: '
    f'{difference:.2e}'
  )
  assert difference < 1e-5
  hidden = encoder.network({bert.WORD_IDS: ids, bert.MASK: mask})
  real = mask.numpy().astype(bool)
  np.testing.assert_allclose(
    hidden.numpy()[real],
    reference.hidden_states(ids.numpy(), mask.numpy())[real],
    atol=1e-4,
  )


def test_published_similarities(encoder):
  embeddings, _, _ = _embed(encoder, _PUBLISHED_SENTENCES)
  similarities = embeddings @ embeddings.T
  print(
    'cosine similarities',
    np.array2string(similarities, precision=5),
    f'published {_PUBLISHED_SIMILARITIES}',
  )
  np.testing.assert_allclose(similarities, _PUBLISHED_SIMILARITIES, atol=1e-4)


def test_paraphrases_are_closer_than_unrelated_sentences(encoder):
  embeddings, _, _ = _embed(
    encoder,
    [
      'A man is eating food.',
      'A man is eating a piece of bread.',
      'The new movie is awesome.',
      'The new movie is so great.',
      'A monkey is playing drums.',
    ],
  )
  similarities = embeddings @ embeddings.T
  for a, b in ((0, 1), (2, 3)):
    others = [similarities[a, c] for c in range(5) if c not in (a, b)]
    assert similarities[a, b] > max(others) + 0.2


def test_padding_does_not_change_the_embedding(encoder):
  short = backbones.build_text_backbone('MiniLM', 16, 'offline')
  text = ['Padding must be masked out of attention and pooling.']
  ids, mask = tokenization.tokenize(tf.constant(text), short.vocab, 16)
  at_16 = short.embed({'token_ids_xf': ids, 'token_mask_xf': mask})
  at_64, _, _ = _embed(encoder, text)
  np.testing.assert_allclose(
    tf.math.l2_normalize(at_16, axis=1), at_64, atol=1e-6
  )


def test_checkpoint_and_encoder_must_match(tmp_path):
  model_dir = pretrained_weights.minilm_dir()
  with open(os.path.join(model_dir, 'config.json')) as f:
    config = bert.BertConfig.from_json_dict(
      {**json.load(f), 'num_hidden_layers': 5}
    )
  with pytest.raises(ValueError, match='no place for'):
    pretrained_weights.bert_weights(
      bert.build_encoder(config, 8),
      os.path.join(model_dir, 'model.safetensors'),
    )
  with pytest.raises(ValueError, match="'offline'"):
    backbones.build_text_backbone('MiniLM', 8, 'imagenet')
  with pytest.raises(ValueError, match='Unknown text encoder'):
    backbones.build_text_backbone('GPT', 8)
