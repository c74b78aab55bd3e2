"""The text and image+text pipelines, end to end (LocalDagRunner, Beam).

Each runs on bundled data (data/movie_sentiment, data/fashion_text) to a
pushed model, which is then called on the raw held-out strings (and image
bytes) and compared with a bag-of-words model (TF-IDF 1-2 grams + logistic
regression, C by 5-fold CV) trained on the same split; it must beat that
baseline and chance.
Empty texts (and, for image+text, bad images) in a batch get their `status`
while the other elements are classified as when alone (modules/serving.py).
"""

import json
import os

import numpy as np
import pytest

import helpers
from pipeline import settings as settings_lib
from pipeline import local_runner

_DATA = os.path.join(settings_lib.PROJECT_ROOT, 'data')
# Phase 1 runs on cached embeddings, so its epochs are cheap.
TEXT_TRAINER = {'phase1_epochs': 20, 'phase2_epochs': 1}


def _run(tmp_path_factory, name, **settings):
  config = settings_lib.PipelineConfig(
    output_dir=str(tmp_path_factory.mktemp(name)), **settings
  )
  return config, local_runner.run(config)


@pytest.fixture(scope='module')
def text_run(tmp_path_factory):
  return _run(
    tmp_path_factory,
    'text_run',
    modality='text',
    data_root=os.path.join(_DATA, 'movie_sentiment'),
    manifest='reviews.csv',
    id_column='id',
    trainer=TEXT_TRAINER,
  )


def _accuracy(outputs, rows):
  predicted = [label.decode() for label in outputs['label'].numpy()]
  return float(np.mean([p == r['label'] for p, r in zip(predicted, rows)]))


def _check_outputs(outputs, rows):
  probabilities = outputs['probabilities'].numpy()
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  classes = sorted(c.decode() for c in outputs['classes'].numpy()[0])
  assert classes == sorted({r['label'] for r in rows})
  return 1.0 / len(classes)


def test_text_model_beats_bag_of_words_on_raw_strings(text_run):
  config, result = text_run
  assert result.blessed and result.pushed_to
  assert result.training['phase2']['unfrozen_layers'] == ['layer_4', 'layer_5']
  with open(os.path.join(result.examples, 'ingestion_report.json')) as f:
    assert json.load(f)['counts'] == {
      'read': 500,
      'ingested': 500,
      'rejected': 0,
    }
  train = helpers.split_rows(config.pipeline_root, 'train')
  held_out = helpers.split_rows(config.pipeline_root, 'eval')
  outputs = helpers.serve(result.pushed_to, text=[r['text'] for r in held_out])
  chance = _check_outputs(outputs, held_out)
  accuracy = _accuracy(outputs, held_out)
  bag_of_words = helpers.bag_of_words_accuracy(train, held_out)
  print(
    f'text: phase 1 {result.training["phase1"]["eval_accuracy"]:.3f}, '
    f'phase 2 {result.training["phase2"]["eval_accuracy"]:.3f}; pushed '
    f'model on {len(held_out)} raw held-out strings {accuracy:.3f}, '
    f'bag-of-words (TF-IDF + logistic regression, same split) '
    f'{bag_of_words:.3f}, chance {chance:.3f}'
  )
  assert accuracy >= chance + 0.15
  assert accuracy > bag_of_words

  unseen = helpers.serve(
    result.pushed_to,
    text=[
      'A moving, beautifully acted and wonderfully funny film.',
      'Dull, tedious and badly written; a waste of two hours.',
    ],
  )
  assert [l.decode() for l in unseen['label'].numpy()] == [
    'positive',
    'negative',
  ]


def test_image_text_model_beats_bag_of_words(fusion_run):
  config, result = fusion_run
  assert result.blessed and result.pushed_to
  assert result.training['modality'] == 'image_text'
  unfrozen = result.training['phase2']['unfrozen_layers']
  assert 'conv_pw_13' in unfrozen and 'layer_5' in unfrozen  # Both towers.
  train = helpers.split_rows(config.pipeline_root, 'train')
  held_out = helpers.split_rows(config.pipeline_root, 'eval')
  images = []
  for row in held_out:
    with open(os.path.join(config.data_root, row['path']), 'rb') as f:
      images.append(f.read())
  outputs = helpers.serve(
    result.pushed_to, image_bytes=images, text=[r['text'] for r in held_out]
  )
  chance = _check_outputs(outputs, held_out)
  accuracy = _accuracy(outputs, held_out)
  bag_of_words = helpers.bag_of_words_accuracy(train, held_out)
  print(
    f'image+text: phase 1 {result.training["phase1"]["eval_accuracy"]:.3f}'
    f', phase 2 {result.training["phase2"]["eval_accuracy"]:.3f}; pushed '
    f'model on {len(held_out)} held-out image bytes + strings '
    f'{accuracy:.3f}, bag-of-words on the text (same split) '
    f'{bag_of_words:.3f}, chance {chance:.3f}'
  )
  assert accuracy >= 0.85
  assert accuracy > bag_of_words + 0.2


@pytest.mark.reliability('bad input')
def test_empty_texts_get_their_status_and_the_rest_are_classified(text_run):
  _, result = text_run
  texts = ['A moving, beautifully acted film.', 'Dull and badly written.']
  alone = helpers.serve(result.pushed_to, text=texts)
  mixed = helpers.serve(
    result.pushed_to, text=['', texts[0], ' \t\n', texts[1]]
  )
  assert mixed['status'].numpy().astype(str).tolist() == [
    'empty',
    'ok',
    'empty',
    'ok',
  ]
  probabilities = mixed['probabilities'].numpy()
  np.testing.assert_allclose(
    probabilities[[1, 3]], alone['probabilities'].numpy(), atol=1e-5
  )
  assert not probabilities[[0, 2]].any()
  assert mixed['label'].numpy()[[0, 2]].tolist() == [b'', b'']


@pytest.mark.reliability('bad input')
def test_image_text_elements_are_judged_image_first(fusion_run):
  config, result = fusion_run
  row = helpers.split_rows(config.pipeline_root, 'eval')[0]
  with open(os.path.join(config.data_root, row['path']), 'rb') as f:
    image = f.read()
  alone = helpers.serve(
    result.pushed_to, image_bytes=[image], text=[row['text']]
  )
  mixed = helpers.serve(
    result.pushed_to,
    image_bytes=[b'', image, image, b'<html></html>', image],
    text=[row['text'], '', row['text'], '', row['text']],
  )
  assert mixed['status'].numpy().astype(str).tolist() == [
    'empty',
    'empty',
    'ok',
    'unknown_format',
    'ok',
  ]
  probabilities = mixed['probabilities'].numpy()
  for i in (2, 4):
    np.testing.assert_allclose(
      probabilities[i], alone['probabilities'].numpy()[0], atol=1e-5
    )
  assert not probabilities[[0, 1, 3]].any()
