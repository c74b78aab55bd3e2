"""Feature names shared by ExampleGen, Transform, Trainer and the Evaluator."""

# Raw tf.Example features written by components/image_example_gen.py and
# components/text_example_gen.py.
IMAGE_KEY = 'image'  # Encoded JPEG/PNG/GIF/BMP bytes, never decoded pixels.
LABEL_KEY = 'label'  # Class name (UTF-8).
PATH_KEY = 'path'  # Path relative to the data root, for tracing examples.
TEXT_KEY = 'text'  # Raw UTF-8 text.
ID_KEY = 'id'  # Row id (the id column, or <file>:<line>), for tracing.
# For data validation only (statistics, schema, drift); the model never reads
# them (the Trainer parses RAW_INPUTS and the label only).
IMAGE_WIDTH_KEY = 'image_width'  # int64, pixels, from the image header.
IMAGE_HEIGHT_KEY = 'image_height'  # int64, pixels.
IMAGE_FORMAT_KEY = 'image_format'  # Pillow's name: JPEG, PNG, GIF, BMP, MPO.
IMAGE_BYTE_SIZE_KEY = 'image_byte_size'  # int64, the encoded file's bytes.
TEXT_LENGTH_KEY = 'text_length'  # int64, characters of `text`.

# Transformed features produced by modules/preprocessing.py.
IMAGE_XF = 'image_xf'  # float32 [H, W, 3] in [0, 255], resized.
LABEL_XF = 'label_xf'  # int64 index into the label vocabulary.
TOKEN_IDS_XF = 'token_ids_xf'  # int64 [L] WordPiece ids: [CLS] .. [SEP] pad.
TOKEN_MASK_XF = 'token_mask_xf'  # int64 [L] attention mask, 1 on real tokens.
TEXT_XF = 'text_xf'  # The raw string, for encoders that take strings (USE).

LABEL_VOCABULARY = 'label'  # Vocabulary file name in the transform graph.

# What the examples hold; chosen by PipelineConfig.modality.
IMAGE, TEXT, IMAGE_TEXT = 'image', 'text', 'image_text'
MODALITIES = (IMAGE, TEXT, IMAGE_TEXT)
# The raw features each modality feeds to the model.
RAW_INPUTS = {
  IMAGE: (IMAGE_KEY,),
  TEXT: (TEXT_KEY,),
  IMAGE_TEXT: (IMAGE_KEY, TEXT_KEY),
}


def modality_of(feature_names) -> str:
  """The modality whose model inputs are among `feature_names` (raw or _xf)."""
  names = set(feature_names)
  has_image = bool({IMAGE_KEY, IMAGE_XF} & names)
  has_text = bool({TEXT_KEY, TOKEN_IDS_XF, TEXT_XF} & names)
  if has_image and has_text:
    return IMAGE_TEXT
  if has_text:
    return TEXT
  if has_image:
    return IMAGE
  raise ValueError(f'No image or text feature among {sorted(names)}.')
