"""Transform module: preprocessing shared by training, evaluation and serving.

The Transform component runs `preprocessing_fn` only to compute the label
vocabulary; it does not materialize the decoded images or the tokens. The
Trainer and the exported model apply the same transform graph to raw examples
on the fly, so the stored examples stay the size of the encoded images and raw
text, and the decode/resize and the tokenization at serving are byte-for-byte
the code used in training.

What is transformed follows the raw features: `image` is decoded and resized;
`text` is tokenized with the text encoder's own WordPiece vocabulary (fixed
length, attention mask), or passed through for encoders that take strings.
Image+text examples get both. The label vocabulary is the same in all cases.
"""

import tensorflow as tf
import tensorflow_transform as tft

from modules import backbones
from modules import features
from modules import tokenization
from pipeline import settings as settings_lib

DEFAULT_IMAGE_SIZE = settings_lib.DEFAULT_IMAGE_SIZE
DEFAULT_MAX_LENGTH = settings_lib.DEFAULT_MAX_LENGTH


def decode_one(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  """Decodes one encoded image to float32 [size, size, 3] in [0, 255].

  JPEG, PNG, GIF (first frame) and BMP are accepted; greyscale and alpha are
  converted to 3 channels. Resizing keeps values in the [0, 255] range so that
  each backbone applies its own `preprocess_input`.
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image = tf.image.resize(image, [image_size, image_size], antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0)


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
  """Decodes a batch of encoded images [N] with `decode_one`."""
  return tf.map_fn(
    lambda image_bytes: decode_one(image_bytes, image_size),
    encoded,
    fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
  )


def dense_vector(tensor: tf.Tensor) -> tf.Tensor:
  """Turns a [N, 1] dense or sparse string feature into a [N] tensor."""
  if isinstance(tensor, tf.SparseTensor):
    tensor = tf.sparse.to_dense(tensor, default_value='')
  return tf.reshape(tensor, [-1])


def text_features(texts: tf.Tensor, text_encoder: str, max_length: int) -> dict:
  """Strings [N] -> the transformed text features `text_encoder` takes."""
  vocab = backbones.text_vocabulary(text_encoder)
  if vocab is None:
    return {features.TEXT_XF: texts}
  word_ids, mask = tokenization.tokenize(texts, vocab, max_length)
  return {features.TOKEN_IDS_XF: word_ids, features.TOKEN_MASK_XF: mask}


def preprocessing_fn(inputs, custom_config):
  """tf.Transform callback: decoded image and/or tokenized text, label index.

  Args:
    inputs: raw features (at serving, `label` is absent and `label_xf` is
      pruned from the graph).
    custom_config: dict with `image_size` (pixels, square) for images;
      `text_encoder` (a modules/backbones.py text spec) and `max_length`
      (tokens, [CLS] and [SEP] included) for text.

  Returns:
    Transformed features: `image_xf` for images; `token_ids_xf` and
    `token_mask_xf` (or `text_xf`) for text; `label_xf` (-1 for an unknown
    label).
  """
  outputs = {}
  if features.IMAGE_KEY in inputs:
    image_size = int(custom_config.get('image_size', DEFAULT_IMAGE_SIZE))
    outputs[features.IMAGE_XF] = decode_and_resize(
      dense_vector(inputs[features.IMAGE_KEY]), image_size
    )
  if features.TEXT_KEY in inputs:
    outputs.update(
      text_features(
        dense_vector(inputs[features.TEXT_KEY]),
        custom_config.get('text_encoder', backbones.DEFAULT_TEXT_ENCODER),
        int(custom_config.get('max_length', DEFAULT_MAX_LENGTH)),
      )
    )
  if not outputs:
    raise ValueError(
      f'No {features.IMAGE_KEY!r} or {features.TEXT_KEY!r} '
      f'feature among the raw features {sorted(inputs)}.'
    )
  outputs[features.LABEL_XF] = tft.compute_and_apply_vocabulary(
    dense_vector(inputs[features.LABEL_KEY]),
    vocab_filename=features.LABEL_VOCABULARY,
    default_value=-1,
  )
  return outputs
