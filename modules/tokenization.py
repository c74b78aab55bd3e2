"""WordPiece tokenization in the TF graph, as Hugging Face's BertTokenizer does.

Runs inside the Transform graph (tensorflow_text ops), so training and the
exported model tokenize raw strings identically. Normalization is done here
rather than by tensorflow_text's `lower_case=True`, whose NFKC case folding
differs from BERT's (e.g. full-width letters and ligatures), and whose
whitespace split misses Unicode spaces: `normalize` does what Hugging Face's
`BertNormalizer(lowercase=True)` does.
"""

import dataclasses
from typing import List, Tuple

import tensorflow as tf
import tensorflow_text as tf_text

CLS, SEP, PAD = '[CLS]', '[SEP]', '[PAD]'


@dataclasses.dataclass(frozen=True)
class WordPieceVocab:
  """A BERT vocabulary file and whether its model is uncased."""

  path: str
  lower_case: bool = True

  def tokens(self) -> List[str]:
    with tf.io.gfile.GFile(self.path, 'r') as f:
      tokens = f.read().splitlines()
    missing = [t for t in (CLS, SEP, PAD) if t not in tokens]
    if missing:
      raise ValueError(f'Vocabulary {self.path} lacks {missing}.')
    return tokens


def normalize(texts: tf.Tensor, lower_case: bool) -> tf.Tensor:
  """BERT's text normalization (Hugging Face's BertNormalizer).

  Whitespace (Unicode separators included) becomes ' '; other control,
  format and private-use characters are dropped. For uncased models: NFD,
  combining marks dropped, then Unicode lower case character by character.
  """
  texts = tf.strings.regex_replace(texts, r'[\t\n\r\p{Z}]', ' ')
  texts = tf.strings.regex_replace(texts, r'[\x{FFFD}\p{Cc}\p{Cf}\p{Co}]', '')
  if not lower_case:
    return texts
  texts = tf_text.normalize_utf8(texts, 'NFD')
  texts = tf.strings.regex_replace(texts, r'\p{Mn}', '')
  # Per character, like Hugging Face: no final sigma (ICU would write one).
  texts = tf.strings.regex_replace(texts, 'Σ', 'σ')
  return tf.strings.lower(texts, encoding='utf-8')


def tokenize(
  texts: tf.Tensor, vocab: WordPieceVocab, max_length: int
) -> Tuple[tf.Tensor, tf.Tensor]:
  """Strings [N] -> (word ids, attention mask), both int64 [N, max_length].

  Each row is [CLS] + word pieces (truncated to max_length - 2) + [SEP],
  padded with [PAD]; the mask is 1 on real tokens.
  """
  if max_length < 3:
    raise ValueError(f'max_length must be >= 3, got {max_length}.')
  tokens = vocab.tokens()
  ids = {t: i for i, t in enumerate(tokens)}
  # The table is a graph constant: no asset file to ship with the model.
  table = tf.lookup.StaticVocabularyTable(
    tf.lookup.KeyValueTensorInitializer(
      tf.constant(tokens), tf.range(len(tokens), dtype=tf.int64)
    ),
    num_oov_buckets=1,
  )
  tokenizer = tf_text.BertTokenizer(
    table, lower_case=False, unknown_token='[UNK]', token_out_type=tf.int64
  )
  pieces = tokenizer.tokenize(normalize(texts, vocab.lower_case))
  pieces = pieces.merge_dims(-2, -1)[:, : max_length - 2]
  batch = tf.shape(texts)[0]
  word_ids = tf.concat(
    [
      tf.fill([batch, 1], tf.constant(ids[CLS], tf.int64)),
      pieces,
      tf.fill([batch, 1], tf.constant(ids[SEP], tf.int64)),
    ],
    axis=1,
  )
  mask = tf.ones_like(word_ids)
  shape = [None, max_length]
  return (
    word_ids.to_tensor(default_value=ids[PAD], shape=shape),
    mask.to_tensor(default_value=0, shape=shape),
  )
