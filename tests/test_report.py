"""The run report's files, rendering and lookup, on a hand-made report.

Files, copies, markdown, plots and lookup; gate failures as sentences; the
classification report on a hand-made confusion matrix (a class never
predicted, an empty class) against hand values and scikit-learn.

tests/test_cli.py checks the reports of real runs.
"""

import json
import os
import time

import numpy as np
from PIL import Image
import pytest
from sklearn import metrics
from tensorflow_model_analysis.proto import validation_result_pb2

from pipeline import report as report_lib

LABELS = ['bag', 'sneaker', 'trouser']
MATRIX = [[8, 1, 1], [0, 10, 0], [1, 0, 9]]


def _report(pushed_to=None, baseline=None):
  """A report as `report_lib.build` returns it, without running anything."""
  history = {
    'loss': [1.2, 0.6],
    'accuracy': [0.5, 0.8],
    'val_loss': [0.9, 0.5],
    'val_accuracy': [0.6, 0.85],
  }
  return {
    'run_id': '2026-01-02T03:04:05.678901',
    'created': '2026-01-02T03:06:00+00:00',
    'outcome': 'pushed' if pushed_to else 'not_blessed',
    'blessed': bool(pushed_to),
    'pushed_to': pushed_to,
    'model': '/runs/Trainer/model/7',
    'data_root': '/data/shoes',
    'accuracy': {
      'phase1': 0.85,
      'phase2': 0.9,
      'eval': 0.9,
      'baseline': baseline,
    },
    'per_class': {
      name: {
        'examples': 10,
        'accuracy': accuracy,
        'baseline_accuracy': baseline,
      }
      for name, accuracy in zip(LABELS, (0.8, 1.0, 0.9))
    },
    'gate': {
      'accuracy_threshold': 0.6,
      'max_accuracy_drop': 0.0,
      'validation_ok': bool(pushed_to),
      'failures': [] if pushed_to else ['overall: x'],
    },
    'confusion_matrix': {'labels': LABELS, 'matrix': MATRIX},
    'classification_report': report_lib.classification_report(LABELS, MATRIX),
    'training': {
      'phase1': {
        'epochs': 2,
        'learning_rate': 1e-3,
        'eval_accuracy': 0.85,
        'eval_loss': 0.5,
        'history': history,
      },
      'phase2': {
        'epochs': 0,
        'learning_rate': 1e-4,
        'eval_accuracy': 0.9,
        'eval_loss': 0.4,
        'history': {},
      },
    },
    'components': {
      'Trainer': {'state': 'ran', 'seconds': 30.5},
      'Evaluator': {'state': 'ran', 'seconds': 9.0},
    },
    'seconds': 61.0,
    'config': {},
  }


def _assert_png(path, min_size=(300, 200)):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    image.verify()


def test_write_puts_files_in_reports_beside_the_pushed_model_and_copy_to(
  tmp_path,
):
  pushed_to = tmp_path / 'serving' / '1700000000'
  pushed_to.mkdir(parents=True)
  report = _report(pushed_to=str(pushed_to))

  report_dir = report_lib.write(
    report, str(tmp_path), copy_to=str(tmp_path / 'artifacts')
  )

  assert report_dir == str(tmp_path / 'reports' / '2026-01-02T03-04-05.678901')
  beside_model = tmp_path / 'serving' / '1700000000.report'
  for folder in (report_dir, beside_model, tmp_path / 'artifacts'):
    assert sorted(os.listdir(folder)) == [
      'confusion_matrix.png',
      'report.json',
      'report.md',
      'training_curves.png',
    ]
    with open(os.path.join(folder, 'report.json')) as f:
      assert json.load(f) == report
    _assert_png(os.path.join(folder, 'training_curves.png'))
    _assert_png(os.path.join(folder, 'confusion_matrix.png'))
  assert os.listdir(pushed_to) == []  # The SavedModel folder is left alone.


def test_gate_held_report_is_not_copied_to_serving(tmp_path):
  report_lib.write(_report(baseline=0.95), str(tmp_path))
  assert os.listdir(tmp_path) == ['reports']


def test_markdown_states_the_outcome_and_the_numbers():
  pushed = report_lib.render_markdown(_report(pushed_to='/s/1700000000'))
  assert '**Blessed and pushed** to `/s/1700000000`' in pushed
  assert '| Trainer, after phase 1 (frozen backbone), 2 epochs | 0.8500 |' in (
    pushed
  )
  assert '| Evaluator (TFMA), latest blessed model | none yet |' in pushed
  stopped = _report()
  stopped['training']['phase1']['epochs'] = 100
  stopped['training']['phase1']['early_stopping'] = {
    'patience': 10,
    'stopped_early': True,
    'epochs_run': 12,
    'best_epoch': 2,
  }
  assert (
    '| Trainer, after phase 1 (frozen backbone), epoch 2 of 12 run | 0.8500 |'
  ) in report_lib.render_markdown(stopped)
  assert '| **bag** | 8 | 1 | 1 |' in pushed
  assert '| Trainer | ran | 30.5 |' in pushed
  assert '![training curves](training_curves.png)' in pushed

  held = report_lib.render_markdown(_report(baseline=0.95))
  assert '**Not blessed: the gate held.**' in held
  assert '| Evaluator (TFMA), latest blessed model | 0.9500 |' in held
  assert '- failed: overall: x' in held


def test_plots_without_epochs_or_model_are_still_images(tmp_path):
  report_lib.plot_training(
    {'phase1': {'history': {}}}, str(tmp_path / 'curves.png')
  )
  report_lib.plot_confusion_matrix(
    {'labels': [], 'matrix': []}, str(tmp_path / 'confusion.png')
  )
  _assert_png(tmp_path / 'curves.png')
  _assert_png(tmp_path / 'confusion.png')


def test_find_returns_the_newest_report_or_the_named_run(tmp_path):
  older, newer = _report(), _report()
  newer['run_id'] = '2026-01-03T00:00:00.000000'
  older_dir = report_lib.write(older, str(tmp_path))
  newer_dir = report_lib.write(newer, str(tmp_path))
  past = time.time() - 60
  os.utime(os.path.join(older_dir, 'report.json'), (past, past))

  assert report_lib.find(str(tmp_path)) == newer_dir
  assert report_lib.find(str(tmp_path), older['run_id']) == older_dir
  with pytest.raises(FileNotFoundError, match='No run report for run nope'):
    report_lib.find(str(tmp_path), 'nope')
  with pytest.raises(FileNotFoundError, match='tfx-transfer run'):
    report_lib.find(str(tmp_path / 'empty'))


def test_gate_failures_read_as_sentences():
  validation = validation_result_pb2.ValidationResult()
  overall = validation.metric_validations_per_slice.add()
  below = overall.failures.add()
  below.metric_key.name = 'sparse_categorical_accuracy'
  below.metric_threshold.value_threshold.lower_bound.value = 0.6
  below.metric_value.double_value.value = 0.5
  per_class = validation.metric_validations_per_slice.add()
  per_class.slice_key.single_slice_keys.add(column='label', bytes_value=b'bag')
  worse = per_class.failures.add()
  worse.metric_key.name = 'sparse_categorical_accuracy'
  worse.metric_key.is_diff = True
  worse.metric_threshold.change_threshold.absolute.value = -0.01
  worse.metric_value.double_value.value = -0.25

  assert report_lib._failures(validation) == [
    'overall: sparse_categorical_accuracy 0.5000 < 0.6',
    'label=bag: sparse_categorical_accuracy -0.2500 vs the latest blessed '
    'model (allowed drop: 0.01)',
  ]


def test_classification_report_from_a_hand_made_confusion_matrix():
  # Rows true, columns predicted. `coat` is never predicted (no precision);
  # `dress` has no eval examples and is never predicted (nothing defined).
  labels = ['bag', 'sneaker', 'coat', 'dress']
  matrix = [[3, 1, 0, 0], [2, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
  report = report_lib.classification_report(labels, matrix)

  bag, sneaker, coat, dress = (report['per_class'][n] for n in labels)
  # bag: TP 3, FP 2 + 1, FN 1.
  assert bag == {'precision': 0.5, 'recall': 0.75, 'f1': 0.6, 'support': 4}
  # sneaker: TP 2, FP 1, FN 2.
  assert sneaker == {
    'precision': pytest.approx(2 / 3),
    'recall': 0.5,
    'f1': pytest.approx(4 / 7),
    'support': 4,
  }
  assert coat == {'precision': None, 'recall': 0.0, 'f1': 0.0, 'support': 1}
  assert dress == {'precision': None, 'recall': None, 'f1': None, 'support': 0}
  assert report['accuracy'] == pytest.approx(5 / 9)
  # Averages count None as 0, over all four classes.
  assert report['macro_avg']['precision'] == pytest.approx((0.5 + 2 / 3) / 4)
  assert report['weighted_avg']['recall'] == pytest.approx(
    (4 * 0.75 + 4 * 0.5) / 9
  )
  json.dumps(report)  # JSON-ready: None, not NaN.

  # The same as scikit-learn with zero_division=0 on the matrix's examples.
  y_true = [
    i
    for i, row in enumerate(matrix)
    for j, n in enumerate(row)
    for _ in range(n)
  ]
  y_pred = [j for row in matrix for j, n in enumerate(row) for _ in range(n)]
  for average, key in (
    (None, None),
    ('macro', 'macro_avg'),
    ('weighted', 'weighted_avg'),
  ):
    expected = metrics.precision_recall_fscore_support(
      y_true,
      y_pred,
      labels=range(len(labels)),
      average=average,
      zero_division=0,
    )[:3]
    if key:
      ours = [report[key][name] for name in ('precision', 'recall', 'f1')]
    else:
      ours = [
        [report['per_class'][label][name] or 0.0 for label in labels]
        for name in ('precision', 'recall', 'f1')
      ]
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_markdown_has_the_classification_report():
  markdown = report_lib.render_markdown(_report())
  assert '## Precision, recall, F1' in markdown
  # bag: TP 8, FP 1, FN 2 -> precision 8/9, recall 0.8, F1 16/19.
  assert '| bag | 0.8889 | 0.8000 | 0.8421 | 10 |' in markdown
  assert '| *macro average* | 0.8993 | 0.9000 | 0.8982 | 30 |' in markdown
  assert 'undefined' not in markdown

  report = _report()
  report['classification_report'] = report_lib.classification_report(
    LABELS, [[9, 1, 0], [0, 10, 0], [1, 0, 0]]
  )
  markdown = report_lib.render_markdown(report)
  assert '| trouser | - | 0.0000 | 0.0000 | 1 |' in markdown
  assert '-: undefined (precision of a class never predicted' in markdown
