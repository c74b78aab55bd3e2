"""Helpers for tests that run the real pipeline and load what it produced."""

import glob
import os
from typing import Dict, List, Tuple

import tensorflow as tf
from tfx import v1 as tfx

from modules import features
from modules import trainer

# Small but real: the demo's two phases, shortened to keep the suite fast.
E2E_TRAINER = {'phase1_epochs': 3, 'phase2_epochs': 1}


def latest_artifact(pipeline_root: str, component: str, output: str) -> str:
  """The newest output directory of `component` (TFX names them by id)."""
  dirs = glob.glob(os.path.join(pipeline_root, component, output, '*'))
  dirs = [d for d in dirs if os.path.basename(d).isdigit()]
  return max(dirs, key=lambda d: int(os.path.basename(d)))


def split_examples(pipeline_root: str, split: str) -> List[Tuple[str, str]]:
  """(relative path, label) of every example ExampleGen put in `split`."""
  return artifact_examples(
      latest_artifact(pipeline_root, 'FileBasedExampleGen', 'examples'), split)


def artifact_examples(examples: str, split: str) -> List[Tuple[str, str]]:
  """(relative path, label) of each example in an Examples artifact's split."""
  records = tf.data.TFRecordDataset(
      glob.glob(os.path.join(examples, f'Split-{split}', '*')),
      compression_type='GZIP')
  result = []
  for record in records:
    example = tf.train.Example.FromString(record.numpy())
    feature = example.features.feature
    result.append((feature[features.PATH_KEY].bytes_list.value[0].decode(),
                   feature[features.LABEL_KEY].bytes_list.value[0].decode()))
  return result


def classify(saved_model_dir: str, data_root: str,
             paths: List[str]) -> Dict[str, tf.Tensor]:
  """Runs `serving_default` of a SavedModel on the raw bytes of `paths`."""
  serve = tf.saved_model.load(saved_model_dir).signatures['serving_default']
  image_bytes = [
      tf.io.read_file(os.path.join(data_root, p)).numpy() for p in paths]
  return serve(image_bytes=tf.constant(image_bytes))


def accuracy(saved_model_dir: str, data_root: str,
             examples: List[Tuple[str, str]]) -> float:
  outputs = classify(saved_model_dir, data_root, [p for p, _ in examples])
  predicted = [label.decode() for label in outputs['label'].numpy()]
  return sum(p == l for p, (_, l) in zip(predicted, examples)) / len(examples)


def trainer_fn_args(pipeline_root: str, output_dir: str,
                    custom_config: Dict) -> tfx.components.FnArgs:
  """FnArgs for calling run_fn on the pipeline's own examples and graph."""
  examples = latest_artifact(pipeline_root, 'FileBasedExampleGen', 'examples')
  return tfx.components.FnArgs(
      train_files=[os.path.join(examples, 'Split-train', '*')],
      eval_files=[os.path.join(examples, 'Split-eval', '*')],
      transform_output=latest_artifact(pipeline_root, 'Transform',
                                       'transform_graph'),
      serving_model_dir=os.path.join(output_dir, 'serving_model'),
      model_run_dir=os.path.join(output_dir, 'model_run'),
      custom_config=custom_config)


def train_directly(pipeline_root: str, output_dir: str,
                   custom_config: Dict) -> str:
  """Runs the real run_fn outside the pipeline; returns the SavedModel dir."""
  fn_args = trainer_fn_args(pipeline_root, output_dir, custom_config)
  trainer.run_fn(fn_args)
  return fn_args.serving_model_dir


def split_rows(pipeline_root: str, split: str) -> List[Dict[str, str]]:
  """Every example ExampleGen put in `split`, its string features decoded."""
  return artifact_rows(
      latest_artifact(pipeline_root, 'FileBasedExampleGen', 'examples'), split)


def artifact_rows(examples: str, split: str) -> List[Dict[str, str]]:
  """Every example of an Examples artifact's split, string features decoded."""
  records = tf.data.TFRecordDataset(
      glob.glob(os.path.join(examples, f'Split-{split}', '*')),
      compression_type='GZIP')
  rows = []
  for record in records:
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    rows.append({name: value.bytes_list.value[0].decode()
                 for name, value in feature.items() if name != 'image'})
  return rows


def serve(saved_model_dir: str, **inputs) -> Dict[str, tf.Tensor]:
  """Calls `serving_default` of a SavedModel (text models included)."""
  import tensorflow_text  # pylint: disable=g-import-not-at-top,unused-import
  signature = tf.saved_model.load(saved_model_dir).signatures['serving_default']
  return signature(**{k: tf.constant(v) for k, v in inputs.items()})


def bag_of_words_accuracy(train: List[Dict[str, str]],
                          test: List[Dict[str, str]]) -> float:
  """TF-IDF (1-2 grams) + logistic regression, C chosen by 5-fold CV."""
  from sklearn import feature_extraction  # pylint: disable=g-import-not-at-top
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import pipeline  # pylint: disable=g-import-not-at-top
  model = pipeline.make_pipeline(
      feature_extraction.text.TfidfVectorizer(ngram_range=(1, 2),
                                              sublinear_tf=True),
      linear_model.LogisticRegressionCV(Cs=[0.1, 1, 10, 100], cv=5,
                                        max_iter=2000))
  model.fit([r['text'] for r in train], [r['label'] for r in train])
  return model.score([r['text'] for r in test], [r['label'] for r in test])
