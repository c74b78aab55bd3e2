"""The run report: metrics JSON, a markdown summary and PNG plots.

Written to `<output_dir>/reports/<run>/` after every local run and, when the
model was pushed, copied next to it as `<serving>/<version>.report/` (beside
the SavedModel directory, never inside it):

  report.json           what `build` returns (see its docstring)
  report.md             `render_markdown(report)`
  training_curves.png   accuracy and loss per epoch, both phases
  confusion_matrix.png  the run's model on the eval split

The output directory may be an object store (s3://, gs://): files are written
and found through tf.io.gfile there (`tfx-transfer report` on a local
directory still loads no TensorFlow).
"""

import dataclasses
import datetime
import glob
import io
import json
import os
import re
import typing
from typing import Any, Dict, List, Optional

from matplotlib import figure
from matplotlib import ticker
import numpy as np

from modules import features
from pipeline import object_store
from pipeline import settings as settings_lib

if typing.TYPE_CHECKING:  # It loads TFX, which `tfx-transfer report` skips.
  from pipeline import local_runner

REPORTS_DIR = 'reports'
JSON_FILE, MARKDOWN_FILE = 'report.json', 'report.md'
CURVES_FILE, CONFUSION_FILE = 'training_curves.png', 'confusion_matrix.png'
_ACCURACY = 'sparse_categorical_accuracy'
_EXAMPLE_COUNT = 'example_count'


def build(
  config: settings_lib.PipelineConfig, result: 'local_runner.RunResult'
) -> Dict[str, Any]:
  """The report of one run, as written to report.json.

  Returns:
    A JSON-ready dict: `run_id`, `created` (UTC), `outcome` ('pushed',
    'not_blessed' or 'data_anomalies': stopped before Transform),
    `blessed`, `pushed_to`, `model`, `data_root`;
    `accuracy` with `phase1`, `phase2` (the Trainer's eval after each phase),
    `eval` (the Evaluator's) and `baseline` (the served model's on the
    same examples; None without one); `per_class` (class -> examples,
    accuracy, baseline_accuracy); `gate` (thresholds, `validation_ok`,
    `failures` as sentences); `data_validation` (the ExampleValidator's
    `anomalies` and `warnings`, each with `check`, `feature`, `split`,
    `reason`, `expected`, `found`; the `reference` schema and statistics;
    this run's `statistics` and inferred `schema`); `confusion_matrix`
    (`labels`, `matrix` rows =
    true class, columns = predicted); `classification_report` (per-class
    precision, recall, F1 and support from that matrix, see
    `classification_report`; None without a model); `training` (per phase:
    epochs, learning rate, eval accuracy and loss, per-epoch `history`);
    `selection` (see `selection`); `components` (node -> state and
    seconds) and the run's total `seconds`; `config`.
  """
  training = result.training
  evaluation = _evaluation(result.evaluation) if result.evaluation else {}
  labels = sorted(training.get('class_names', []))
  matrix = (
    _confusion_matrix(result.model, result.examples, labels)
    if result.model and result.examples and labels
    else []
  )
  validation = {
    'anomalies': [],
    'warnings': [],
    'reference': None,
    **(result.data_validation or {}),
    'statistics': result.statistics,
    'schema': result.schema,
  }
  if result.pushed_to:
    outcome = 'pushed'
  elif validation['anomalies']:
    outcome = 'data_anomalies'
  else:
    outcome = 'not_blessed'
  return {
    'run_id': result.run_id,
    'created': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'
    ),
    'outcome': outcome,
    'blessed': result.blessed,
    'pushed_to': result.pushed_to,
    'model': result.model,
    'data_root': config.data_root,
    'accuracy': {
      **{
        phase: training.get(phase, {}).get('eval_accuracy')
        for phase in _phase_names(training)
      },
      'eval': evaluation.get('accuracy'),
      'baseline': evaluation.get('baseline_accuracy'),
    },
    'per_class': evaluation.get('per_class', {}),
    'gate': {
      'accuracy_threshold': config.accuracy_threshold,
      'max_accuracy_drop': config.max_accuracy_drop,
      'validation_ok': evaluation.get('validation_ok'),
      'failures': evaluation.get('failures', []),
    },
    'data_validation': validation,
    'confusion_matrix': {'labels': labels, 'matrix': matrix},
    'classification_report': (
      classification_report(labels, matrix) if np.sum(matrix) else None
    ),
    'training': {
      phase: {
        key: training[phase][key]
        for key in (
          'epochs',
          'learning_rate',
          'eval_accuracy',
          'eval_loss',
          'history',
        )
      }
      for phase in _phase_names(training)
      if phase in training
    },
    'selection': selection(training),
    'components': {
      node: {
        'state': state,
        'seconds': round(result.component_seconds.get(node, 0.0), 3),
      }
      for node, state in result.components.items()
    },
    'seconds': round(result.seconds, 1),
    # The trainer settings as given (the Trainer's custom_config).
    'config': {
      **dataclasses.asdict(config),
      'trainer': config.trainer.to_dict(),
    },
  }


def selection(training: Dict[str, Any]) -> Dict[str, Any]:
  """How the Trainer chose the exported model (modules/trainer.py).

  Returns:
    `validation` (how the train split was divided), `hyperparameters` (the
    Tuner's best values, None without a Tuner), `chosen` (the exported
    phase) and `candidates`: per phase its `validation_accuracy`,
    `validation_loss`, `eval_accuracy` (reported, never used to choose) and
    `chosen`. Empty values for a summary without them.
  """
  return {
    'validation': training.get('validation'),
    'hyperparameters': training.get('hyperparameters'),
    'chosen': training.get('chosen'),
    'candidates': [
      {
        'phase': phase,
        **{
          key: training[phase].get(key)
          for key in (
            'validation_accuracy',
            'validation_loss',
            'eval_accuracy',
            'chosen',
          )
        },
      }
      for phase in _phase_names(training)
      if phase in training
    ]
    if training.get('chosen')
    else [],
  }


def classification_report(
  labels: List[str], matrix: List[List[int]]
) -> Dict[str, Any]:
  """Precision, recall, F1 and support per class from a confusion matrix.

  Args:
    labels: the class names, in the matrix's order.
    matrix: counts, rows = true class, columns = predicted class.

  Returns:
    `per_class` (class -> `precision`, `recall`, `f1`, `support`: the
    class's eval examples), `macro_avg` (unweighted mean over the classes)
    and `weighted_avg` (weighted by support) of the three, and `accuracy`.
    A class never predicted has no precision (0 / 0): it is None, as is the
    recall of a class with no eval examples, and F1 (2 TP / (2 TP + FP +
    FN)) of a class with neither. The averages count None as 0, as
    scikit-learn's `classification_report(zero_division=0)` does.
  """
  counts = np.array(matrix, dtype=np.int64)
  true_positives = np.diag(counts)
  support, predicted = counts.sum(axis=1), counts.sum(axis=0)

  def _ratio(numerator, denominator):
    return [float(n / d) if d else None for n, d in zip(numerator, denominator)]

  columns = {
    'precision': _ratio(true_positives, predicted),
    'recall': _ratio(true_positives, support),
    'f1': _ratio(2 * true_positives, support + predicted),
  }
  weights = support / support.sum()
  zeroed = {
    name: np.array([0.0 if v is None else v for v in values])
    for name, values in columns.items()
  }
  return {
    'per_class': {
      label: {
        **{name: values[i] for name, values in columns.items()},
        'support': int(support[i]),
      }
      for i, label in enumerate(labels)
    },
    'macro_avg': {
      name: float(values.mean()) for name, values in zeroed.items()
    },
    'weighted_avg': {
      name: float(values @ weights) for name, values in zeroed.items()
    },
    'accuracy': float(true_positives.sum() / counts.sum()),
  }


def _phase_names(training: Dict[str, Any]) -> List[str]:
  """The Trainer's phases in order (progressive unfreezing adds phase3...)."""
  return training.get('phases', ['phase1', 'phase2'])


def write(
  report: Dict[str, Any], output_dir: str, copy_to: Optional[str] = None
) -> str:
  """Writes the report files; returns `<output_dir>/reports/<run>/`.

  Args:
    report: what `build` returned.
    output_dir: the pipeline's output directory.
    copy_to: another directory to copy the files into (e.g. for CI artifacts).
  """
  gfile = _gfile()
  report_dir = os.path.join(
    output_dir, REPORTS_DIR, _dir_name(report['run_id'])
  )
  gfile.makedirs(report_dir)
  with gfile.GFile(os.path.join(report_dir, JSON_FILE), 'w') as f:
    f.write(json.dumps(report, indent=2))
  with gfile.GFile(os.path.join(report_dir, MARKDOWN_FILE), 'w') as f:
    f.write(render_markdown(report))
  plot_training(report['training'], os.path.join(report_dir, CURVES_FILE))
  plot_confusion_matrix(
    report['confusion_matrix'], os.path.join(report_dir, CONFUSION_FILE)
  )
  copies = [copy_to] if copy_to else []
  if report['pushed_to']:
    copies.append(report['pushed_to'].rstrip('/') + '.report')
  for copy in copies:
    gfile.makedirs(copy)
    for name in (JSON_FILE, MARKDOWN_FILE, CURVES_FILE, CONFUSION_FILE):
      gfile.copy(
        os.path.join(report_dir, name), os.path.join(copy, name), overwrite=True
      )
  return report_dir


def find(output_dir: str, run_id: Optional[str] = None) -> str:
  """The directory of the newest report under `output_dir` (or of `run_id`).

  Raises:
    FileNotFoundError: when there is none.
  """
  pattern = os.path.join(output_dir, REPORTS_DIR, '*', JSON_FILE)
  if object_store.is_remote(output_dir):
    gfile = _gfile()
    reports = gfile.glob(pattern)
    mtime = lambda path: gfile.stat(path).mtime_nsec
  else:
    reports, mtime = glob.glob(pattern), os.path.getmtime
  if run_id:
    reports = [
      p
      for p in reports
      if os.path.basename(os.path.dirname(p)) == _dir_name(run_id)
    ]
  if not reports:
    raise FileNotFoundError(
      f'No run report{f" for run {run_id}" if run_id else ""} under '
      f'{os.path.join(output_dir, REPORTS_DIR)}; `tfx-transfer run` '
      'writes one.'
    )
  return os.path.dirname(max(reports, key=mtime))


def read(report_dir: str, name: str) -> str:
  """The text of one report file (`find`'s directory, local or remote)."""
  if object_store.is_remote(report_dir):
    with _gfile().GFile(os.path.join(report_dir, name)) as f:
      return f.read()
  with open(os.path.join(report_dir, name)) as f:
    return f.read()


def _gfile():
  """tf.io.gfile, imported on use (it loads TensorFlow)."""
  import tensorflow as tf

  return tf.io.gfile


def _save(fig: figure.Figure, path: str) -> None:
  """Saves `fig` as a PNG at `path` (local or on an object store)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  with _gfile().GFile(path, 'wb') as f:
    f.write(buffer.getvalue())


def _dir_name(run_id: str) -> str:
  """The run id as a folder name CI artifact uploads accept (no ':')."""
  return re.sub(r'[^\w.-]', '-', run_id)


def render_markdown(report: Dict[str, Any]) -> str:
  """A markdown summary of `report` (for report.md, CI job summaries)."""
  accuracy, gate = report['accuracy'], report['gate']
  validation = report.get('data_validation') or {}
  if report['pushed_to']:
    outcome = f'**Blessed and pushed** to `{report["pushed_to"]}`'
  elif validation.get('anomalies'):
    outcome = (
      '**Stopped by data validation, before Transform.** Nothing '
      'was trained or pushed; the previous model keeps serving'
    )
  else:
    outcome = (
      '**Not blessed: the gate held.** Nothing was pushed; the '
      'previous model keeps serving'
    )
  lines = [
    f'# Run report {report["run_id"]}',
    '',
    f'{outcome}. Data: `{report["data_root"]}`; {report["seconds"]:.0f} s.',
    '',
    '| accuracy on the eval split | value |',
    '|---|---|',
  ]
  for phase, result in report['training'].items():
    name = (
      'phase 1 (frozen backbone)'
      if phase == 'phase1'
      else f'phase {phase[len("phase") :]} (fine-tuning)'
    )
    stopping = result.get('early_stopping')
    epochs = (
      f'{result["epochs"]} epochs'
      if not stopping
      else f'epoch {stopping["best_epoch"]} of {stopping["epochs_run"]} run'
    )
    lines.append(
      f'| Trainer, after {name}, {epochs} | {_number(accuracy.get(phase))} |'
    )
  lines += [
    f'| Evaluator (TFMA), this model | {_number(accuracy["eval"])} |',
    f'| Evaluator (TFMA), latest blessed model | '
    f'{_number(accuracy["baseline"], "none yet")} |',
    '',
    f'Gate: accuracy >= {gate["accuracy_threshold"]:g} on every slice and '
    f'at most {gate["max_accuracy_drop"]:g} below the latest blessed model.',
  ]
  lines += [f'- failed: {failure}' for failure in gate['failures']]
  lines += _validation_markdown(validation)
  lines += _selection_markdown(report.get('selection') or {})
  if report['per_class']:
    lines += [
      '',
      '## Per class',
      '',
      '| class | examples | accuracy | latest blessed model |',
      '|---|---:|---:|---:|',
    ]
    lines += [
      f'| {name} | {m["examples"]} | {_number(m["accuracy"])} | '
      f'{_number(m["baseline_accuracy"], "-")} |'
      for name, m in report['per_class'].items()
    ]
  matrix = report['confusion_matrix']
  if matrix['matrix']:
    lines += [
      '',
      '## Confusion matrix',
      '',
      'Rows: true class; columns: predicted class.',
      '',
      '| | ' + ' | '.join(matrix['labels']) + ' |',
      '|---|' + '---:|' * len(matrix['labels']),
    ]
    lines += [
      f'| **{label}** | ' + ' | '.join(str(n) for n in row) + ' |'
      for label, row in zip(matrix['labels'], matrix['matrix'])
    ]
  if report.get('classification_report'):
    lines += ['', *_classification_markdown(report['classification_report'])]
  lines += [
    '',
    '## Components',
    '',
    '| component | state | seconds |',
    '|---|---|---:|',
  ]
  lines += [
    f'| {node} | {c["state"]} | {c["seconds"]:.1f} |'
    for node, c in report['components'].items()
  ]
  lines += [
    '',
    f'![training curves]({CURVES_FILE})',
    f'![confusion matrix]({CONFUSION_FILE})',
    '',
  ]
  return '\n'.join(lines)


def _validation_markdown(validation: Dict[str, Any]) -> List[str]:
  """The data validation's anomalies and warnings as a markdown section."""
  lines = []
  for title, key in (
    ('Data anomalies', 'anomalies'),
    ('Data validation warnings', 'warnings'),
  ):
    if validation.get(key):
      lines += [
        '',
        f'## {title}',
        '',
        '| check | feature | split | expected | found |',
        '|---|---|---|---|---|',
      ]
      lines += [
        f'| {e["check"]} | {e["feature"]} | {e["split"]} | '
        f'{_cell(e["expected"])} | {_cell(e["found"])} |'
        for e in validation[key]
      ]
  return lines


def _cell(text: str) -> str:
  return text.replace('|', '\\|').replace('\n', ' ')


def _selection_markdown(chosen: Dict[str, Any]) -> List[str]:
  """The candidates for export and the choice, as a markdown section."""
  if not chosen.get('candidates'):
    return []
  validation = chosen['validation'] or {}
  lines = [
    '',
    '## Exported model',
    '',
    f'The best phase on the validation part of the train split '
    f'({validation.get("validation_examples", "?")} examples held out, '
    f'{validation.get("fit_examples", "?")} fitted on); the eval split '
    'is reported, never used to choose.',
    '',
    '| phase | validation accuracy | validation loss | '
    'eval accuracy | exported |',
    '|---|---:|---:|---:|---|',
  ]
  lines += [
    f'| {c["phase"]} | {_number(c["validation_accuracy"])} | '
    f'{_number(c["validation_loss"])} | {_number(c["eval_accuracy"])} '
    f'| {"**yes**" if c["chosen"] else ""} |'
    for c in chosen['candidates']
  ]
  if chosen.get('hyperparameters'):
    lines += [
      '',
      'Tuned (Tuner component): '
      + ', '.join(
        f'{key} = {value:.3g}'
        if isinstance(value, float)
        else f'{key} = {value}'
        for key, value in sorted(chosen['hyperparameters'].items())
      )
      + '.',
    ]
  return lines


def _classification_markdown(classification: Dict[str, Any]) -> List[str]:
  """The classification report as a markdown section."""
  per_class = classification['per_class']
  lines = [
    '## Precision, recall, F1',
    '',
    '| class | precision | recall | F1 | support |',
    '|---|---:|---:|---:|---:|',
  ]
  lines += [
    f'| {label} | {_number(m["precision"])} | {_number(m["recall"])} '
    f'| {_number(m["f1"])} | {m["support"]} |'
    for label, m in per_class.items()
  ]
  total = sum(m['support'] for m in per_class.values())
  for key, name in (
    ('macro_avg', 'macro average'),
    ('weighted_avg', 'weighted average'),
  ):
    m = classification[key]
    lines.append(
      f'| *{name}* | {_number(m["precision"])} | '
      f'{_number(m["recall"])} | {_number(m["f1"])} | {total} |'
    )
  if any(None in m.values() for m in per_class.values()):
    lines += [
      '',
      '-: undefined (precision of a class never predicted, '
      'recall of a class without eval examples); the averages count '
      'it as 0.',
    ]
  return lines


def _number(value: Optional[float], missing: str = '-') -> str:
  return missing if value is None else f'{value:.4f}'


def plot_training(training: Dict[str, Any], path: str) -> None:
  """Accuracy and loss per epoch of both phases, train and eval, as a PNG."""
  fig = figure.Figure(figsize=(10, 4), layout='constrained')
  axes = fig.subplots(1, 2)
  epoch = 0
  for i, phase in enumerate(training):
    style = ('-', '--', ':', '-.')[min(i, 3)]
    history = training[phase].get('history', {})
    epochs = list(range(epoch + 1, epoch + 1 + len(history.get('loss', []))))
    for ax, metric in zip(axes, ('accuracy', 'loss')):
      for key, color in ((metric, 'tab:blue'), (f'val_{metric}', 'tab:orange')):
        if history.get(key):
          split = 'eval' if key.startswith('val_') else 'train'
          ax.plot(
            epochs,
            history[key],
            style,
            marker='o',
            color=color,
            label=f'{phase} {split}',
          )
    if epochs and epoch:
      for ax in axes:
        ax.axvline(epoch + 0.5, color='grey', linewidth=0.8)
    epoch += len(epochs)
  for ax, metric in zip(axes, ('accuracy', 'loss')):
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f'{metric} (phase 1 solid, then dashed, dotted)')
    if epoch:
      ax.legend(fontsize='small')
    else:
      ax.text(
        0.5,
        0.5,
        'no training epochs',
        ha='center',
        va='center',
        transform=ax.transAxes,
      )
  axes[0].set_ylim(0, 1.02)
  _save(fig, path)


def plot_confusion_matrix(confusion: Dict[str, Any], path: str) -> None:
  """The confusion matrix (rows true, columns predicted) as a PNG."""
  labels, matrix = confusion['labels'], np.array(confusion['matrix'])
  size = 2 + 0.6 * max(len(labels), 3)
  fig = figure.Figure(figsize=(size + 1, size), layout='constrained')
  ax = fig.subplots()
  if matrix.size:
    image = ax.imshow(matrix, cmap='Blues')
    fig.colorbar(image, ax=ax, shrink=0.8)
    for (row, column), count in np.ndenumerate(matrix):
      ax.text(
        column,
        row,
        str(count),
        ha='center',
        va='center',
        color='white' if count > matrix.max() / 2 else 'black',
      )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha='right')
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title(f'eval split, accuracy {np.trace(matrix) / matrix.sum():.3f}')
  else:
    ax.text(0.5, 0.5, 'no model to evaluate', ha='center', va='center')
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  _save(fig, path)


def _evaluation(uri: str) -> Dict[str, Any]:
  """Accuracy overall and per class, and the gate's verdict, from TFMA."""
  # Imported here: TFMA loads TensorFlow, which `tfx-transfer report` skips.
  import tensorflow_model_analysis as tfma

  candidate = tfma.load_eval_result(uri)
  specs = {spec.is_baseline: spec.name for spec in candidate.config.model_specs}
  if True in specs:
    candidate = tfma.load_eval_result(uri, model_name=specs[False])
    baseline = _accuracy_by_class(
      tfma.load_eval_result(uri, model_name=specs[True])
    )
  else:
    baseline = {}
  ours = _accuracy_by_class(candidate)
  overall = ours.pop(None)
  baseline_overall = baseline.pop(None, {})
  validation = tfma.load_validation_result(uri)
  return {
    'accuracy': overall['accuracy'],
    'baseline_accuracy': baseline_overall.get('accuracy'),
    'per_class': {
      name: {
        **metrics,
        'baseline_accuracy': baseline.get(name, {}).get('accuracy'),
      }
      for name, metrics in sorted(ours.items())
    },
    'validation_ok': validation.validation_ok,
    'failures': _failures(validation),
  }


def _accuracy_by_class(eval_result) -> Dict[Optional[str], Dict[str, Any]]:
  """Slice (None = overall, else the class) -> accuracy and example count."""
  result = {}
  for slice_key, metrics in eval_result.slicing_metrics:
    values = metrics['']['']
    name = dict(slice_key).get('label') if slice_key else None
    if isinstance(name, bytes):
      name = name.decode()
    result[name] = {
      'examples': int(values[_EXAMPLE_COUNT]['doubleValue']),
      'accuracy': values[_ACCURACY]['doubleValue'],
    }
  return result


def _failures(validation) -> List[str]:
  """The gate's failed checks as sentences, e.g. for CI annotations."""
  sentences = []
  for per_slice in sorted(
    validation.metric_validations_per_slice, key=_slice_name
  ):
    where = _slice_name(per_slice) or 'overall'
    for failure in per_slice.failures:
      value = failure.metric_value.double_value.value
      threshold = failure.metric_threshold
      metric = failure.metric_key.name
      if failure.metric_key.is_diff:
        allowed_drop = round(-threshold.change_threshold.absolute.value, 6)
        sentences.append(
          f'{where}: {metric} {value:+.4f} vs the latest '
          f'blessed model (allowed drop: {allowed_drop:g})'
        )
      else:
        bound = threshold.value_threshold.lower_bound.value
        sentences.append(f'{where}: {metric} {value:.4f} < {bound:g}')
  return sentences


def _slice_name(per_slice) -> str:
  """E.g. 'label=bag'; '' for the overall slice."""
  names = []
  for key in per_slice.slice_key.single_slice_keys:
    value = getattr(key, key.WhichOneof('kind'))
    names.append(
      f'{key.column}={value.decode() if isinstance(value, bytes) else value}'
    )
  return ', '.join(names)


def _confusion_matrix(
  model_uri: str, examples_uri: str, labels: List[str]
) -> List[List[int]]:
  """Counts of (true, predicted) class of the model on the eval split."""
  # Imported here: see _evaluation.
  import tensorflow as tf
  from tfx.utils import path_utils

  serve = tf.saved_model.load(
    path_utils.serving_model_path(model_uri)
  ).signatures['serving_examples']
  files = tf.io.gfile.glob(os.path.join(examples_uri, 'Split-eval', '*'))
  index = {label: i for i, label in enumerate(labels)}
  matrix = np.zeros((len(labels), len(labels)), dtype=int)
  records = tf.data.TFRecordDataset(files, compression_type='GZIP')
  for batch in records.batch(256):
    true = tf.io.parse_example(
      batch, {features.LABEL_KEY: tf.io.FixedLenFeature([], tf.string)}
    )[features.LABEL_KEY].numpy()
    predicted = serve(examples=batch)['label'].numpy()
    for t, p in zip(true, predicted):
      matrix[index[t.decode()], index[p.decode()]] += 1
  return matrix.tolist()
