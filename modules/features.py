"""Feature names shared by ExampleGen, Transform, Trainer and the Evaluator."""

# Raw tf.Example features written by components/image_example_gen.py.
IMAGE_KEY = 'image'  # Encoded JPEG/PNG/GIF/BMP bytes, never decoded pixels.
LABEL_KEY = 'label'  # Class name (UTF-8).
PATH_KEY = 'path'  # Path relative to the data root, for tracing examples.

# Transformed features produced by modules/preprocessing.py.
IMAGE_XF = 'image_xf'  # float32 [H, W, 3] in [0, 255], resized.
LABEL_XF = 'label_xf'  # int64 index into the label vocabulary.

LABEL_VOCABULARY = 'label'  # Vocabulary file name in the transform graph.
