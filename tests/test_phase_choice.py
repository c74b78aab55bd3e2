"""Phase 1 to convergence and the choice of the exported phase.

The closed-form start is scikit-learn's logistic regression; the validation
part is carved from the train split the same way on every call; a
fine-tuning phase that hurts on validation is not exported (the classifier
ends with phase 1's weights). tests/test_pipeline_e2e.py checks the same
through the real pipeline, with the Tuner.
"""

import numpy as np
import pytest
from scipy import special
from sklearn import linear_model
import tensorflow as tf
import tf_keras as keras

from modules import embedding_cache
from modules import linear_probe
from modules import model as model_lib
from modules import phases
from modules import trainer
from modules import tuner
from pipeline import settings as settings_lib
import test_training_options as tiny


def test_closed_form_start_is_sklearns_logistic_regression():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 120)
  embeddings = rng.normal(size=(120, 8)) + labels[:, None] * 0.8
  weight_decay = 1e-2
  kernel, bias = linear_probe.fit(embeddings, labels, 3, weight_decay)
  # scikit-learn minimizes C * sum(CE) + sum(W**2) / 2: the same objective
  # for C = 1 / (2 n lambda).
  reference = linear_model.LogisticRegression(
    C=1 / (2 * 120 * weight_decay), tol=1e-10, max_iter=10_000
  ).fit(embeddings, labels)
  logits = embeddings @ kernel + bias
  probabilities = np.exp(logits - logits.max(1, keepdims=True))
  probabilities /= probabilities.sum(1, keepdims=True)
  np.testing.assert_allclose(
    probabilities, reference.predict_proba(embeddings), atol=1e-4
  )


def test_validation_part_is_fixed_disjoint_and_about_its_fraction():
  serialized = tf.constant([f'example {i}'.encode() for i in range(2000)])
  parts = {
    part: trainer.in_part(serialized, part, 0.2).numpy()
    for part in (trainer.FIT, trainer.VALIDATION)
  }
  assert not np.any(parts[trainer.FIT] & parts[trainer.VALIDATION])
  assert np.all(parts[trainer.FIT] | parts[trainer.VALIDATION])
  assert 0.17 < parts[trainer.VALIDATION].mean() < 0.23
  again = trainer.in_part(serialized, trainer.VALIDATION, 0.2).numpy()
  np.testing.assert_array_equal(again, parts[trainer.VALIDATION])


def test_a_fine_tuning_phase_that_hurts_is_not_exported():
  keras.utils.set_random_seed(0)
  backbone = tiny._tiny_backbone()
  classifier = model_lib.build_classifier(backbone, tiny.IMAGE_SIZE, 2, 0.0)
  # Phase 2 at a learning rate that wrecks the unfrozen convolutions.
  config = settings_lib.TrainerConfig.from_dict(
    {
      'phase1_epochs': 3,
      'phase1_learning_rate': 1e-2,
      'batch_size': 8,
      'phase2_epochs': 2,
      'phase2_learning_rate': 5.0,
      'fine_tune_layers': 11,
    }
  )
  datasets = trainer.Datasets(
    tiny._images(64), tiny._images(32, seed=1), tiny._images(32, seed=2)
  )
  strategy = tf.distribute.get_strategy()
  context = phases.PhaseContext(
    classifier,
    [backbone],
    strategy,
    datasets.train,
    datasets.validation,
    phases.FitOptions.from_config(config),
  )
  pretrained = [
    w.numpy() for w in backbone.network.weights
  ]  # Phase 1 keeps them.
  results = trainer.train_phases(context, config, datasets.eval)

  phase1, phase2 = results['phase1'], results['phase2']
  print(
    f'validation accuracy: phase 1 {phase1["validation_accuracy"]:.3f}, '
    f'phase 2 {phase2["validation_accuracy"]:.3f}'
  )
  assert phase1['start']['method'] == 'logistic_regression'
  assert phase2['validation_loss'] > phase1['validation_loss']
  assert (phase1['chosen'], phase2['chosen']) == (True, False)
  # The classifier ends with phase 1's backbone (phase 2's updates undone)
  # and its start's refit; phase 1's eval figures are that model's.
  for before, after in zip(pretrained, backbone.network.weights):
    np.testing.assert_array_equal(before, after.numpy())
  assert phase1['start']['refit_exported']
  model_lib.compile_for_phase(classifier, 1e-3)
  _, eval_accuracy = classifier.evaluate(datasets.eval, verbose=0)
  assert eval_accuracy == pytest.approx(phase1['eval_accuracy'], abs=1e-6)


def _three_class_parts(seed: int):
  """A fit part (60) and a validation part (40): 20-d, weakly separable."""
  rng = np.random.default_rng(seed)

  def part(n):
    labels = rng.integers(0, 3, n)
    return rng.normal(size=(n, 20)) + labels[:, None] * 0.3, labels

  return part(60), part(40)


def test_the_start_keeps_the_l2_with_the_lowest_cross_validated_loss():
  fit_part, validation = _three_class_parts(seed=1)
  chosen = linear_probe.fit_by_cross_validation(fit_part, validation, 3)
  assert chosen['folds'] == linear_probe.FOLDS
  embeddings, labels = (np.concatenate(p) for p in zip(fit_part, validation))
  fold = linear_probe.stratified_folds(labels, linear_probe.FOLDS)
  for label in range(3):  # Each class dealt evenly over the folds.
    counts = np.bincount(fold[labels == label], minlength=linear_probe.FOLDS)
    assert counts.max() - counts.min() <= 1
  losses = {}
  for weight_decay in linear_probe.WEIGHT_DECAYS:
    held_out = []
    for k in range(linear_probe.FOLDS):
      solution = linear_probe.fit(
        embeddings[fold != k], labels[fold != k], 3, weight_decay
      )
      held_out.append(
        (fold == k).sum()
        * linear_probe.cross_entropy(
          *solution, embeddings[fold == k], labels[fold == k]
        )
      )
    losses[weight_decay] = sum(held_out) / len(labels)
  print('cross-validated cross-entropy by lambda:', losses)
  best = min(losses, key=losses.get)
  assert chosen['weight_decay'] == best
  # Each lambda's figure is its optimum's, whatever the warm start.
  for weight_decay, loss in losses.items():
    assert chosen['cross_validation_losses'][weight_decay] == pytest.approx(
      loss, rel=1e-4
    )
  # The start is fitted on the fit part alone, at the chosen lambda.
  kernel, bias = linear_probe.fit(*fit_part, 3, best)
  assert linear_probe.cross_entropy(
    chosen['kernel'], chosen['bias'], *validation
  ) == pytest.approx(
    linear_probe.cross_entropy(kernel, bias, *validation), rel=1e-4
  )


def test_a_memo_gives_the_same_choice_as_solving_again():
  fit_part, validation = _three_class_parts(seed=1)
  grid = linear_probe.WEIGHT_DECAYS + (3e-4,)
  fresh = linear_probe.fit_by_cross_validation(fit_part, validation, 3, grid)
  memo = linear_probe.CrossValidationMemo()
  linear_probe.fit_by_cross_validation(
    fit_part, validation, 3, linear_probe.WEIGHT_DECAYS, memo=memo
  )
  assert sorted(memo.losses) == sorted(linear_probe.WEIGHT_DECAYS)
  again = linear_probe.fit_by_cross_validation(
    fit_part, validation, 3, grid, memo=memo
  )
  assert again['weight_decay'] == fresh['weight_decay']
  assert sorted(memo.losses) == sorted(grid)
  for decay, loss in fresh['cross_validation_losses'].items():
    assert again['cross_validation_losses'][decay] == pytest.approx(
      loss, rel=1e-4
    )
  np.testing.assert_allclose(again['kernel'], fresh['kernel'], atol=1e-4)


def test_a_large_validation_part_chooses_the_l2_alone():
  fit_part, validation = _three_class_parts(seed=2)
  chosen = linear_probe.fit_by_cross_validation(
    fit_part, validation, 3, cross_validate_below=40
  )
  losses = {
    weight_decay: linear_probe.cross_entropy(
      *linear_probe.fit(*fit_part, 3, weight_decay), *validation
    )
    for weight_decay in linear_probe.WEIGHT_DECAYS
  }
  best = min(losses, key=losses.get)
  assert chosen['folds'] == 1 and chosen['weight_decay'] == best
  assert chosen['cross_validation_losses'][best] == pytest.approx(
    losses[best], rel=1e-4
  )


def test_the_tuner_cross_validates_each_l2_once(tmp_path, monkeypatch):
  """Every trial adds its own head L2 to linear_probe.WEIGHT_DECAYS; the
  folds of the grid's lambdas are solved in the first trial only, and a
  later trial starts each of its solves from an earlier solution."""
  fit_part, validation = _three_class_parts(seed=3)
  fold_solves = []  # The lambda of each solve on a fold's training rows.
  cold_solves = []  # The lambda of each solve that starts from zeros.
  solve = linear_probe.fit

  def counting_fit(embeddings, labels, num_classes, weight_decay, *a, **k):
    if len(labels) == 80:  # 4 of the 5 folds of 100; not 60 or 100.
      fold_solves.append(weight_decay)
    if k.get('initial') is None:
      cold_solves.append(weight_decay)
    return solve(embeddings, labels, num_classes, weight_decay, *a, **k)

  monkeypatch.setattr(linear_probe, 'fit', counting_fit)
  trials = 2  # The first pays for tracing: about 30 s idle.
  search = tuner.HeadSearch(
    {trainer.FIT: fit_part[0], trainer.VALIDATION: validation[0]},
    {trainer.FIT: fit_part[1], trainer.VALIDATION: validation[1]},
    3,
    settings_lib.TrainerConfig.from_dict({'phase1_epochs': 3}),
    max_trials=trials,
    seed=0,
    directory=str(tmp_path),
    project_name='head',
  )
  search.search()

  assert len(search.oracle.trials) == trials
  # Each lambda's folds once: the grid's, and each trial's own L2 (the
  # first trial's is the default, 1e-4, already in the grid).
  solved = set(fold_solves)
  assert solved >= set(linear_probe.WEIGHT_DECAYS)
  assert len(solved) > len(linear_probe.WEIGHT_DECAYS)
  assert [fold_solves.count(decay) for decay in sorted(solved)] == [
    linear_probe.FOLDS
  ] * len(solved)
  # Cold: only the first trial's strongest lambda, once per fold.
  assert cold_solves == [max(linear_probe.WEIGHT_DECAYS)] * linear_probe.FOLDS


@pytest.mark.parametrize(
  'learning_rate, weight_decays, kept',
  [
    # Epochs at a learning rate that only makes the head worse: the
    # closed-form start is kept.
    (10.0, linear_probe.WEIGHT_DECAYS, True),
    # A start held back by too strong an L2: the epochs beat it on the
    # validation part, and the refit is still what phase 1 exports.
    (0.05, (1.0,), False),
  ],
)
def test_phase1_is_exported_as_its_start_refitted_on_fit_and_validation(
  learning_rate, weight_decays, kept, monkeypatch
):
  monkeypatch.setattr(linear_probe, 'WEIGHT_DECAYS', weight_decays)
  keras.utils.set_random_seed(0)
  backbone = tiny._tiny_backbone()
  classifier = model_lib.build_classifier(backbone, tiny.IMAGE_SIZE, 3, 0.0)
  # Phase 2 runs no epoch and ties, so phase 1 is exported (the earlier
  # phase on a tie).
  config = settings_lib.TrainerConfig.from_dict(
    {
      'phase1_epochs': 2,
      'phase1_learning_rate': learning_rate,
      'head_weight_decay': 0.0,
      'batch_size': 8,
      'phase2_epochs': 0,
    }
  )
  datasets = trainer.Datasets(
    tiny._images(64, num_classes=3), tiny._images(48, seed=1, num_classes=3)
  )
  context = phases.PhaseContext(
    classifier,
    [backbone],
    tf.distribute.get_strategy(),
    datasets.train,
    datasets.validation,
    phases.FitOptions.from_config(config),
  )
  eval_dataset = tiny._images(40, seed=2, num_classes=3)
  results = trainer.train_phases(context, config, eval_dataset)

  start = results['phase1']['start']
  assert start['kept'] == kept and start['refit_exported']
  # The reported eval figures are the exported model's: the refit's.
  loss, accuracy = classifier.evaluate(eval_dataset, verbose=0)
  assert results['phase1']['eval_accuracy'] == pytest.approx(accuracy)
  assert results['phase1']['eval_loss'] == pytest.approx(loss, rel=1e-5)
  assert 'refit' not in results['phase1']
  embedder = embedding_cache.embedding_model(classifier)
  fit_part, validation = (
    linear_probe.load(
      (embedder(inputs, training=False), labels) for inputs, labels in data
    )
    for data in (datasets.train, datasets.validation)
  )
  kernel, bias = linear_probe.fit(
    np.concatenate([fit_part[0], validation[0]]),
    np.concatenate([fit_part[1], validation[1]]),
    3,
    start['weight_decay'],
  )
  exported = classifier.predict(datasets.validation, verbose=0)
  np.testing.assert_allclose(
    special.softmax(exported, axis=1),
    special.softmax(validation[0] @ kernel + bias, axis=1),
    atol=1e-3,
  )
