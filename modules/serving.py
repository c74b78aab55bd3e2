"""Serving: each element is judged before it is decoded; none fails the batch.

The exported signatures (modules/trainer.py) call `classify`. Per element:
  * an image is judged from its bytes alone: empty; its format from the magic
    bytes (JPEG, PNG, GIF, BMP: what tf.io.decode_image decodes and ingestion
    accepts); its width x height from the header (JPEG: libjpeg's header
    reader, `tf.image.extract_jpeg_shape`; PNG: IHDR; GIF: the logical screen;
    BMP: the info header, the fields TF's decoder reads), bounded by the
    model's `max_pixels` (the ingestion setting of the run that trained it).
    Only then is it decoded, inside a tf.data pipeline with `ignore_errors`,
    so a body that fails to decode (truncated, corrupt) drops that element
    alone; it is scattered back by index as `corrupt`.
  * a text is `empty` when it is empty or whitespace only.
The model runs on the `ok` elements only. Outputs, one row per element:
`status` (STATUSES), `label` ('' unless ok), `probability` and
`probabilities` (0 unless ok) and `classes`.
"""

import json
import os
from typing import Callable, Dict, List, Optional, Tuple

from absl import logging
import tensorflow as tf

from modules import features
from modules import preprocessing
from pipeline import settings as settings_lib

OK, EMPTY, UNKNOWN_FORMAT, TOO_LARGE, CORRUPT = (
  'ok',
  'empty',
  'unknown_format',
  'too_large',
  'corrupt',
)
STATUSES = (OK, EMPTY, UNKNOWN_FORMAT, TOO_LARGE, CORRUPT)
# What a bad status means, for people (tfx-transfer predict prints it).
MEANINGS = {
  EMPTY: 'empty input',
  UNKNOWN_FORMAT: 'not a JPEG, PNG, GIF or BMP image',
  TOO_LARGE: "its header claims more pixels than the model's max_pixels",
  CORRUPT: 'the image header or body could not be decoded',
}
# Images decoded at once: each may hold up to ~15 bytes x max_pixels (the
# decoded image and its float copy in the resize).
DECODE_PARALLELISM = 4

_JPEG, _PNG, _GIF, _BMP = b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'GIF8', b'BM'
_HEADER_BYTES = 32  # Enough for the PNG, GIF and BMP size fields.


def ingestion_max_pixels(train_files: Optional[List[str]] = None) -> int:
  """The max_pixels the training examples were ingested with.

  Read from the ingestion report of their Examples artifact
  (components/ingestion.py); the default (pipeline/settings.py) without
  train_files or a report.
  """
  default = settings_lib.DEFAULT_MAX_PIXELS
  if not train_files:
    return default
  # Imported here: it loads Beam, which serving itself never needs.
  from components import ingestion

  examples = os.path.dirname(os.path.dirname(train_files[0]))
  report = os.path.join(examples, ingestion.REPORT_FILE_NAME)
  if not tf.io.gfile.exists(report):
    logging.warning(
      'No %s: serving bounds images to the ingestion default max_pixels %d',
      report,
      default,
    )
    return default
  with tf.io.gfile.GFile(report) as f:
    return int(json.load(f)['options']['max_pixels'])


def _uint(header: tf.Tensor, offset: int, size: int, big_endian: bool):
  """The unsigned integer of `size` bytes at `offset` of uint8 `header`."""
  digits = header[offset : offset + size]
  if big_endian:
    digits = tf.reverse(digits, [0])
  return tf.reduce_sum(digits * (256 ** tf.range(size, dtype=tf.int64)))


def _header_size(data: tf.Tensor, is_jpeg, is_png, is_gif):
  """(width, height) an image's header claims; raises if it cannot be read.

  Short headers read as 0 x 0, which the decoder then fails on.
  """
  if_short = tf.constant(b'\x00' * _HEADER_BYTES)
  header = tf.cast(
    tf.io.decode_raw(
      tf.strings.substr(data + if_short, 0, _HEADER_BYTES), tf.uint8
    ),
    tf.int64,
  )

  def jpeg():
    shape = tf.image.extract_jpeg_shape(data, output_type=tf.int64)
    return shape[1], shape[0]

  def bmp():  # Signed 32-bit; a negative height is a top-down BMP.
    signed = [_uint(header, offset, 4, False) for offset in (18, 22)]
    return tuple(tf.abs(tf.where(v >= 2**31, v - 2**32, v)) for v in signed)

  return tf.case(
    [
      (is_jpeg, jpeg),
      (
        is_png,
        lambda: (_uint(header, 16, 4, True), _uint(header, 20, 4, True)),
      ),
      (
        is_gif,
        lambda: (_uint(header, 6, 2, False), _uint(header, 8, 2, False)),
      ),
    ],
    default=bmp,
  )


def _judge_and_decode_one(
  data: tf.Tensor, image_size: int, max_pixels: int
) -> Tuple[tf.Tensor, tf.Tensor]:
  """(status, image [size, size, 3]); raises where the image is corrupt."""
  starts = lambda magic: tf.strings.substr(data, 0, len(magic)) == magic
  is_jpeg, is_png, is_gif, is_bmp = (
    starts(m) for m in (_JPEG, _PNG, _GIF, _BMP)
  )
  empty = tf.strings.length(data) == 0
  known = is_jpeg | is_png | is_gif | is_bmp

  def size_status():
    width, height = _header_size(data, is_jpeg, is_png, is_gif)
    pixels = tf.cast(width, tf.float64) * tf.cast(height, tf.float64)
    return tf.where(pixels > max_pixels, TOO_LARGE, OK)

  status = tf.cond(
    empty,
    lambda: tf.constant(EMPTY),
    lambda: tf.cond(known, size_status, lambda: tf.constant(UNKNOWN_FORMAT)),
  )
  image = tf.cond(
    status == OK,
    lambda: preprocessing.decode_one(data, image_size),
    lambda: tf.zeros([image_size, image_size, 3]),
  )
  return status, image


def judge_and_decode(
  encoded: tf.Tensor, image_size: int, max_pixels: int
) -> Tuple[tf.Tensor, tf.Tensor]:
  """Encoded images [N] -> (status [N], float32 [N, size, size, 3]).

  The images are decoded as in training (preprocessing.decode_one); those
  not `ok` are zeros.
  """
  count = tf.shape(encoded, out_type=tf.int64)[0]
  judged = (
    tf.data.Dataset.from_tensor_slices((tf.range(count), encoded))
    .map(
      lambda i, data: (i, *_judge_and_decode_one(data, image_size, max_pixels)),
      num_parallel_calls=DECODE_PARALLELISM,
      deterministic=False,
    )
    .ignore_errors()
    .batch(tf.maximum(count, 1))
  )
  index, status, image = judged.reduce(
    (
      tf.zeros([0], tf.int64),
      tf.zeros([0], tf.string),
      tf.zeros([0, image_size, image_size, 3]),
    ),
    lambda state, batch: tuple(
      tf.concat([s, b], 0) for s, b in zip(state, batch)
    ),
  )
  index = index[:, None]
  status = tf.tensor_scatter_nd_update(tf.fill([count], CORRUPT), index, status)
  images = tf.scatter_nd(index, image, [count, image_size, image_size, 3])
  return status, images


def text_status(texts: tf.Tensor) -> tf.Tensor:
  """Texts [N] -> status [N]: `empty` for empty or whitespace-only text."""
  return tf.where(tf.strings.strip(texts) == '', EMPTY, OK)


def classify(
  raw: Dict[str, tf.Tensor],
  transform_text: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
  probabilities_of: Callable[[Dict[str, tf.Tensor]], tf.Tensor],
  class_names: tf.Tensor,
  image_size: Optional[int],
  max_pixels: int,
) -> Dict[str, tf.Tensor]:
  """Raw inputs [N] (image bytes and/or texts) -> the outputs, per element.

  Args:
    raw: features.IMAGE_KEY and/or features.TEXT_KEY -> strings [N].
    transform_text: texts [K] -> their transformed features (the transform
      graph's), for the ok elements.
    probabilities_of: transformed features of the K ok elements -> [K, C].
    class_names: [C] strings.
    image_size: the decoded image's side, for image models.
    max_pixels: images whose header claims more pixels are `too_large`.
  """
  first = next(iter(raw.values()))
  status = tf.fill(tf.shape(first), OK)
  images = None
  if features.IMAGE_KEY in raw:  # Judged first.
    status, images = judge_and_decode(
      raw[features.IMAGE_KEY], image_size, max_pixels
    )
  if features.TEXT_KEY in raw:
    status = tf.where(status == OK, text_status(raw[features.TEXT_KEY]), status)
  ok = tf.where(status == OK)
  transformed = {}
  if images is not None:
    transformed[features.IMAGE_XF] = tf.gather_nd(images, ok)
  if features.TEXT_KEY in raw:
    transformed.update(transform_text(tf.gather_nd(raw[features.TEXT_KEY], ok)))
  num_classes = tf.size(class_names, tf.int64)
  ok_probabilities = tf.cond(  # The model is not called on an empty batch.
    tf.size(ok) > 0,
    lambda: probabilities_of(transformed),
    lambda: tf.zeros(tf.stack([0, num_classes])),
  )
  probabilities = tf.scatter_nd(
    ok, ok_probabilities, tf.stack([tf.size(status, tf.int64), num_classes])
  )
  top = tf.argmax(probabilities, axis=-1)
  return {
    'status': status,
    'label': tf.where(status == OK, tf.gather(class_names, top), ''),
    'probability': tf.reduce_max(probabilities, axis=-1),
    'classes': tf.broadcast_to(class_names, tf.shape(probabilities)),
    'probabilities': probabilities,
  }
