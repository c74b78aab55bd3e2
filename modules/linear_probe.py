"""The closed-form start of phase 1: a multinomial logistic regression.

Phase 1 trains the head (dropout + dense logits, modules/model.py `head`) on
frozen embeddings. Its loss, without dropout, is convex in the dense
layer's weights, so its minimum is found directly: L-BFGS (scipy) on

  (1/N) sum_i w_i CE(softmax(x_i W + b), y_i) + lambda * sum(W**2)

which is exactly what Keras minimizes for that layer (sum-over-batch
cross-entropy with class weights w, the kernel's L2 regularizer lambda,
no penalty on the bias). Loading the solution into the dense layer starts
phase 1 where a linear probe on the same embeddings ends; phase 1 then
trains with dropout, and keeps whichever of its start and its epochs has
the lower validation loss (modules/embedding_cache.py). An exported phase 1
is the start solved again on the fit and validation parts together
(modules/trainer.py `_Candidates`).
"""

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import optimize
from scipy import special
import tensorflow as tf

# The L2 strengths (lambda) the closed-form start chooses from. scikit-learn's
# LogisticRegression() (C=1) on n examples is lambda = 1 / (2n): 1e-3 for
# 500 examples, 1e-5 for 50,000.
WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Folds of the cross-validation that chooses among them when the validation
# part has fewer than CROSS_VALIDATE_BELOW examples: one split of 85 chose
# too weak a lambda on SpamAssassin (benchmarks/RESULTS.md (g)). A larger
# validation part is as reliable alone, and FOLDS times cheaper.
FOLDS = 5
CROSS_VALIDATE_BELOW = 500

# Embedding matrices above this many floats are not loaded into memory; the
# head then starts from Keras' random initialization.
MAX_FLOATS = 1 << 28  # 1 GiB of float32.


def fit(
  embeddings: np.ndarray,
  labels: np.ndarray,
  num_classes: int,
  weight_decay: float,
  class_weight: Optional[Dict[int, float]] = None,
  max_iterations: int = 500,
  initial: Optional[Tuple[np.ndarray, np.ndarray]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
  """The (kernel [D, C], bias [C]) minimizing the objective above.

  `initial` (kernel, bias) warm-starts L-BFGS; default zeros.
  """
  x = embeddings.astype(np.float64)
  n, dims = x.shape
  onehot = np.eye(num_classes)[labels]
  weights = (
    np.ones(n)
    if class_weight is None
    else np.array([class_weight.get(int(y), 1.0) for y in labels])
  )

  def objective(params):
    kernel = params[: dims * num_classes].reshape(dims, num_classes)
    bias = params[dims * num_classes :]
    logits = x @ kernel + bias
    log_probs = logits - special.logsumexp(logits, axis=1, keepdims=True)
    loss = -np.sum(weights * np.sum(onehot * log_probs, axis=1)) / n
    loss += weight_decay * np.sum(kernel**2)
    grad_logits = (np.exp(log_probs) - onehot) * weights[:, None] / n
    grad_kernel = x.T @ grad_logits + 2 * weight_decay * kernel
    return loss, np.concatenate([grad_kernel.ravel(), grad_logits.sum(0)])

  result = optimize.minimize(
    objective,
    np.zeros(dims * num_classes + num_classes)
    if initial is None
    else np.concatenate([initial[0].ravel(), initial[1]]).astype(np.float64),
    jac=True,
    method='L-BFGS-B',
    options={'maxiter': max_iterations, 'ftol': 1e-12, 'gtol': 1e-7},
  )
  params = result.x
  return (
    params[: dims * num_classes].reshape(dims, num_classes).astype(np.float32),
    params[dims * num_classes :].astype(np.float32),
  )


def cross_entropy(
  kernel: np.ndarray, bias: np.ndarray, embeddings: np.ndarray, labels
) -> float:
  """The mean cross-entropy of softmax(embeddings @ kernel + bias)."""
  logits = embeddings.astype(np.float64) @ kernel + bias
  log_probs = logits - special.logsumexp(logits, axis=1, keepdims=True)
  return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def stratified_folds(labels: np.ndarray, folds: int) -> np.ndarray:
  """Each example's fold, 0..folds-1: classes dealt round-robin (seeded)."""
  order = np.random.default_rng(0).permutation(len(labels))
  order = order[np.argsort(labels[order], kind='stable')]
  fold = np.empty(len(labels), int)
  fold[order] = np.arange(len(labels)) % folds
  return fold


@dataclasses.dataclass
class CrossValidationMemo:
  """What fit_by_cross_validation solved, for later calls on the same parts
  and class weights (the Tuner's trials).

  Attributes:
    losses: {lambda: mean held-out cross-entropy}.
    solutions: {(fold, lambda): (kernel, bias)} of each fold's solve.
  """

  losses: Dict[float, float] = dataclasses.field(default_factory=dict)
  solutions: Dict[Tuple[int, float], Tuple[np.ndarray, np.ndarray]] = (
    dataclasses.field(default_factory=dict)
  )

  def nearest(self, fold: int, weight_decay: float):
    """The fold's solution at the lambda nearest `weight_decay` (log scale);
    None before any."""
    solved = [decay for k, decay in self.solutions if k == fold]
    if not solved:
      return None
    closest = min(solved, key=lambda d: abs(np.log(d / weight_decay)))
    return self.solutions[fold, closest]


def fit_by_cross_validation(
  fit_part: Tuple[np.ndarray, np.ndarray],
  validation: Tuple[np.ndarray, np.ndarray],
  num_classes: int,
  weight_decays: Sequence[float] = WEIGHT_DECAYS,
  class_weight: Optional[Dict[int, float]] = None,
  folds: int = FOLDS,
  cross_validate_below: int = CROSS_VALIDATE_BELOW,
  memo: Optional[CrossValidationMemo] = None,
) -> dict:
  """The lambda with the lowest cross-validated cross-entropy; `fit` there.

  The folds split the fit and validation parts together (stratified by
  label, seeded); from `cross_validate_below` validation examples, the one
  fold is the validation part. In each, the lambdas run from the strongest
  down, each warm-started from the fold's solution at the nearest lambda
  solved. The returned solution is `fit` on `fit_part` alone at that
  lambda, so the validation part still judges it. `memo` (from earlier
  calls on the same parts and class weights, e.g. the Tuner's trials) skips
  the lambdas it holds, warm-starts the new ones from its solutions, and
  receives them.

  Returns:
    `weight_decay` (the chosen lambda), its `kernel` and `bias`, `folds`,
    and `cross_validation_losses` ({lambda: mean held-out cross-entropy}).
  """
  embeddings, labels = (
    np.concatenate(parts) for parts in zip(fit_part, validation)
  )
  if len(validation[1]) < cross_validate_below:
    fold = stratified_folds(labels, folds)
  else:
    folds, fold = 1, np.repeat([1, 0], [len(fit_part[1]), len(validation[1])])
  memo = CrossValidationMemo() if memo is None else memo
  totals = {decay: 0.0 for decay in weight_decays if decay not in memo.losses}
  for k in range(folds):
    train, held_out = fold != k, fold == k
    for weight_decay in sorted(totals, reverse=True):
      solution = memo.solutions[k, weight_decay] = fit(
        embeddings[train],
        labels[train],
        num_classes,
        weight_decay,
        class_weight,
        initial=memo.nearest(k, weight_decay),
      )
      totals[weight_decay] += held_out.sum() * cross_entropy(
        *solution, embeddings[held_out], labels[held_out]
      )
  held_out_count = np.sum(fold < folds)  # The examples a fold holds out.
  memo.losses.update(
    {decay: total / held_out_count for decay, total in totals.items()}
  )
  losses = {decay: memo.losses[decay] for decay in weight_decays}
  chosen = min(losses, key=losses.get)
  # Warm-started from the last fold's solution (with one fold, the same one).
  kernel, bias = fit(
    *fit_part,
    num_classes,
    chosen,
    class_weight,
    initial=memo.solutions[folds - 1, chosen],
  )
  return {
    'weight_decay': chosen,
    'kernel': kernel,
    'bias': bias,
    'folds': folds,
    'cross_validation_losses': dict(sorted(losses.items())),
  }


def load(dataset: tf.data.Dataset) -> Tuple[np.ndarray, np.ndarray]:
  """(embeddings, labels) of a dataset of such batches, as numpy arrays.

  Raises:
    MemoryError: when the embeddings exceed MAX_FLOATS.
  """
  embeddings, labels, floats = [], [], 0
  for batch_embeddings, batch_labels in dataset:
    floats += int(np.prod(batch_embeddings.shape))
    if floats > MAX_FLOATS:
      raise MemoryError(f'the embeddings exceed {MAX_FLOATS} floats')
    embeddings.append(batch_embeddings.numpy())
    labels.append(batch_labels.numpy().reshape(-1))
  return np.concatenate(embeddings), np.concatenate(labels)
