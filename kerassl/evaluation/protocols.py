"""The evaluation protocols: how a frozen or fine-tuned encoder becomes a classifier.

| protocol | trains on | selects / stops on | reference |
|---|---|---|---|
| `linear` | frozen features of every chosen label | C by cross-validation | SimCLR B.5 |
| `mlp` | frozen features of `split.labeled` | early stopping on `split.validation` | study A |
| `knn` | nothing (a bank of every chosen label) | nothing: k and τ are fixed | Wu et al. 2018 |
| `1nn` | nothing (the same bank) | nothing | study C |
| `finetune` | the network on `split.labeled`, augmented | early stopping (validation) | SimCLR |
| `distill` | a student on a teacher's soft labels of the pool | early stopping | SimCLRv2 |

A protocol sees a `Task`: the training images and labels, the split and the test *images*.
It never sees a test label: it returns test scores, which `kerassl.evaluation.cells.score`
compares with the labels. So no protocol can train, select or stop on the test split.

When a split has no validation labels (1 label per class), `mlp` and `finetune` train
for a fixed number of epochs instead of stopping early, and their `schedule` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from kerassl.data.presets import label_flip
from kerassl.data.splits import Split
from kerassl.evaluation.features import extract_features
from kerassl.evaluation.knn import knn_scores
from kerassl.evaluation.options import ProtocolOptions
from kerassl.evaluation.probes import fit_linear_probe
from kerassl.stopping import BestEpoch, best_epoch, epochs_within


@dataclass(frozen=True)
class Task:
    """What a protocol may see (no test labels).

    Attributes:
        x_train: uint8 training images [N, H, W, C].
        y_train: [N] labels (-1 = unlabeled); only `split`'s indices are read.
        split: the labeled and validation indices into `x_train`.
        x_test: uint8 test images [T, H, W, C], to score.
        num_classes: K.
        preset: the encoder's augmentation preset (`kerassl.data.presets`): whether flips
            preserve labels, and `consistency`'s strong views.
        seed: seed of every random choice the protocol makes.
        pool: indices into `x_train` of the unlabeled pool (`distill`, `consistency`);
            None = all.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    split: Split
    x_test: np.ndarray
    num_classes: int
    preset: str = "none"
    seed: int = 0
    pool: np.ndarray | None = None

    @property
    def flip(self) -> bool:
        """Horizontal flips preserve labels (the label-set augmentation may flip)."""
        return label_flip(self.preset)

    @property
    def validation(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The split's `(images, labels)` that stages select and stop on, or None."""
        if not len(self.split.validation):
            return None
        return self.x_train[self.split.validation], self.y_train[self.split.validation]

    @classmethod
    def of(cls, data, split: Split, preset: str, seed: int) -> Task:
        """The task of `split` on an `ImageData` (its test labels left out)."""
        return cls(
            x_train=data.x_train,
            y_train=data.y_train,
            split=split,
            x_test=data.x_test,
            num_classes=data.num_classes,
            preset=preset,
            seed=seed,
        )


@dataclass
class Outcome:
    """A protocol's result before scoring.

    Attributes:
        scores: float [T, K] test class scores (probabilities or votes).
        schedule: how the protocol chose and stopped, in words.
        selected: what it chose on the training labels (C, epochs, k, …), JSON-ready.
        classifier: [0, 1] images → class probabilities, when the protocol trains one.
        ranked: whether the scores rank every class; a 1-NN vote scores one class, so
            only its top-1 is reported.
    """

    scores: np.ndarray
    schedule: str
    selected: dict = field(default_factory=dict)
    classifier: keras.Model | None = None
    ranked: bool = True


class FeatureCache:
    """Features of one frozen encoder, each image embedded at most once, and the
    protocols' outcomes on it, each computed at most once per split (`distill` asks for
    the `finetune` outcome it starts from).

    Args:
        encoder: [0, 1] images → [D] features.
        x_train: uint8 training images; `train(indices)` embeds only those asked for.
        x_test: uint8 test images; `test()` embeds them all, once.
        batch_size: images per forward pass.
    """

    def __init__(
        self, encoder: keras.Model, x_train: np.ndarray, x_test: np.ndarray, batch_size: int = 256
    ):
        self.encoder = encoder
        self.x_train, self.x_test = x_train, x_test
        self.batch_size = batch_size
        self._train: dict[int, np.ndarray] = {}
        self._test: np.ndarray | None = None
        self._outcomes: dict[tuple, Outcome] = {}

    def outcome(self, name: str, task: Task, options: ProtocolOptions) -> Outcome:
        """Protocol `name`'s outcome on `task`, run once per (split, seed, options)."""
        key = self._key(name, task, options)
        if key not in self._outcomes:
            # Only the current split's outcomes are kept: each may hold a trained network.
            self._outcomes = {k: v for k, v in self._outcomes.items() if k[1:] == key[1:]}
            self._outcomes[key] = PROTOCOL_FUNCTIONS[name](task, self.encoder, self, options)
        return self._outcomes[key]

    def remember(self, name: str, task: Task, options: ProtocolOptions, outcome: Outcome):
        """Records `outcome` as protocol `name`'s on `task` (computed by an earlier process:
        a resumed run's fine-tuned network)."""
        self._outcomes[self._key(name, task, options)] = outcome

    @staticmethod
    def _key(name: str, task: Task, options: ProtocolOptions) -> tuple:
        split = task.split
        return (
            name,
            split.labeled.tobytes(),
            split.validation.tobytes(),
            task.seed,
            task.flip,
            options,
        )

    def train(self, indices: np.ndarray) -> np.ndarray:
        """float32 [len(indices), D] features of `x_train[indices]`."""
        indices = np.asarray(indices, np.int64)
        missing = np.unique([i for i in indices.tolist() if i not in self._train])
        if len(missing):
            rows = extract_features(self.encoder, self.x_train[missing], self.batch_size)
            self._train.update(zip(missing.tolist(), rows, strict=True))
        if not len(indices):
            return np.zeros((0, self.encoder.output_shape[-1]), np.float32)
        return np.stack([self._train[i] for i in indices.tolist()])

    def test(self) -> np.ndarray:
        """float32 [T, D] features of the test images."""
        if self._test is None:
            self._test = extract_features(self.encoder, self.x_test, self.batch_size)
        return self._test


def linear(task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions):
    """Logistic regression on standardised frozen features of every chosen label, its C
    chosen by cross-validation on them (`kerassl.evaluation.probes`)."""
    labeled = task.split.all_labeled
    probe = fit_linear_probe(
        cache.train(labeled), task.y_train[labeled], task.num_classes, seed=task.seed
    )
    if probe.cv_folds:
        schedule = (
            f"C = {probe.c:g} by {probe.cv_folds}-fold cross-validation × {probe.cv_repeats} "
            f"on the {probe.num_train} labels"
        )
    else:
        schedule = f"C = {probe.c:g} (default: a class has 1 label, no cross-validation)"
    return Outcome(
        scores=probe.scores(cache.test()),
        schedule=schedule,
        selected={"c": probe.c, "cv_accuracy": probe.cv_accuracy, "converged": probe.converged},
        classifier=on_encoder(encoder, probe.dense()),
    )


def mlp(task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions):
    """One hidden layer (ReLU, `options.mlp_hidden` units) on standardised frozen features
    of `split.labeled`, early-stopped on the validation labels (`kerassl.stopping`)."""
    split = task.split
    x, y = cache.train(split.labeled), task.y_train[split.labeled]
    keras.utils.set_random_seed(task.seed)
    normalize = keras.layers.Normalization(name="standardize")
    normalize.adapt(x)
    head = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            normalize,
            keras.layers.Dense(options.mlp_hidden, activation="relu", name="hidden"),
            keras.layers.Dense(task.num_classes, activation="softmax", name="classes"),
        ],
        name="mlp_head",
    )
    head.compile(
        optimizer=keras.optimizers.AdamW(options.learning_rate, weight_decay=1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],  # the stopping rule selects on the validation accuracy
    )
    validation = None
    if len(split.validation):
        validation = (cache.train(split.validation), task.y_train[split.validation])
    fit = stopping(options, validation, steps_per_epoch=-(-len(x) // options.batch_size))
    history = head.fit(
        x,
        y,
        batch_size=min(options.batch_size, len(x)),
        epochs=fit.epochs,
        validation_data=validation,
        callbacks=fit.callbacks,
        shuffle=True,
        verbose=0,
    )
    return Outcome(
        scores=np.asarray(head.predict(cache.test(), batch_size=1024, verbose=0), np.float64),
        schedule=fit.describe(history),
        selected=fit.selected(history),
        classifier=on_encoder(encoder, head),
    )


def knn(task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions):
    """Weighted cosine kNN vote with a bank of every chosen label (`knn_scores`)."""
    return _neighbours(task, cache, options.knn_k, options.knn_temperature)


def one_nn(task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions):
    """The nearest labeled neighbour's class (cosine similarity)."""
    return _neighbours(task, cache, 1, options.knn_temperature)


def _neighbours(task: Task, cache: FeatureCache, k: int, temperature: float) -> Outcome:
    labeled = task.split.all_labeled
    votes = knn_scores(
        cache.train(labeled), task.y_train[labeled], cache.test(), k=k, temperature=temperature
    )
    scores = np.zeros((len(votes), task.num_classes))
    scores[:, : votes.shape[1]] = votes
    k = min(k, len(labeled))
    return Outcome(
        scores=scores,
        schedule=f"no training: k = {k}, τ = {temperature:g}, bank of {len(labeled)} labels",
        selected={"k": k, "temperature": temperature},
        ranked=k > 1,
    )


def finetune(task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions):
    """The whole network fine-tuned on the labels (`kerassl.evaluation.finetune`)."""
    from kerassl.evaluation.finetune import finetune as run

    return run(task, encoder, cache, options)


@dataclass(frozen=True)
class _Stopping:
    """Early stopping on validation labels, or a fixed schedule when there are none."""

    epochs: int
    patience: int
    early: bool
    num_validation: int
    start: int = 0  # epochs before one may be kept (`options.min_steps` of training)

    @property
    def callbacks(self) -> list[keras.callbacks.Callback]:
        """What `supervised.train_classifier` does: `kerassl.stopping.BestEpoch` (the
        smoothed validation accuracy's best epoch, else the lowest training loss)."""
        return [BestEpoch(self.patience, validation=self.early, start_from_epoch=self.start)]

    def best_epoch(self, history: keras.callbacks.History) -> int:
        return best_epoch(history.history, validation=self.early, start_from_epoch=self.start)

    def selected(self, history: keras.callbacks.History) -> dict:
        return {"epoch": self.best_epoch(history), "epochs_run": len(history.epoch)}

    def describe(self, history: keras.callbacks.History) -> str:
        if not self.early:
            return (
                f"fixed {self.epochs} epochs (no validation labels to stop on); weights of "
                f"the lowest training loss, epoch {self.best_epoch(history)}"
            )
        return (
            f"early stopping on {self.num_validation} validation labels (smoothed accuracy): "
            f"best epoch {self.best_epoch(history)} of {len(history.epoch)}"
        )


def stopping(
    options: ProtocolOptions, validation, epochs: int | None = None, steps_per_epoch: int = 1
) -> _Stopping:
    """Early stopping on `validation` for at most `epochs` (default `options.max_epochs`),
    no epoch kept before `options.min_steps` steps; or `options.fixed_epochs` (capped by
    `epochs`) when there are no validation labels. Either way no more epochs than
    `options.max_steps` steps take."""
    most = epochs or options.max_epochs
    if validation is None or not len(validation[0]):
        fixed = epochs_within(options.max_steps, steps_per_epoch, min(options.fixed_epochs, most))
        return _Stopping(epochs=fixed, patience=fixed + 1, early=False, num_validation=0)
    return _Stopping(
        epochs=epochs_within(options.max_steps, steps_per_epoch, most),
        patience=options.patience,
        early=True,
        num_validation=len(validation[0]),
        start=-(-options.min_steps // max(1, steps_per_epoch)),
    )


def copy_encoder(encoder: keras.Model) -> keras.Model:
    """A trainable copy of `encoder` (the evaluated encoder is never modified)."""
    copy = keras.models.clone_model(encoder)
    copy.set_weights(encoder.get_weights())
    return copy


def on_encoder(encoder: keras.Model, head: keras.layers.Layer) -> keras.Model:
    """[0, 1] images → `head(encoder(images))` in inference mode: a classifier."""
    inputs = keras.Input(encoder.input_shape[1:], name="images")
    return keras.Model(inputs, head(encoder(inputs, training=False)), name="classifier")


def unlabeled_pool(task: Task, most: int | None = None) -> np.ndarray:
    """Indices of the unlabeled pool of `distill` and `consistency`: the task's pool
    without its validation images (the labels a stage selects on stay images it was not
    fitted to), at most `most` of them drawn with the task's seed."""
    pool = np.arange(len(task.x_train)) if task.pool is None else np.asarray(task.pool)
    pool = np.setdiff1d(pool, task.split.validation)
    if most is not None and len(pool) > most:
        pool = np.sort(np.random.default_rng(task.seed).choice(pool, most, False))
    return pool


def validation_batches(validation, batch_size: int):
    """The `(images, labels)` validation set as batches for `fit`, or None."""
    if validation is None:
        return None
    from kerassl.data.pipeline import labeled_dataset

    return labeled_dataset(*validation, batch_size=batch_size)


def distill(task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions):
    """Self-distillation on the pool (`kerassl.evaluation.distill`)."""
    from kerassl.evaluation.distill import distill as run

    return run(task, encoder, cache, options)


def consistency(task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions):
    """FixMatch-style consistency training from the encoder (`kerassl.evaluation.consistency`)."""
    from kerassl.evaluation.consistency import consistency as run

    return run(task, encoder, cache, options)


Protocol = Callable[[Task, keras.Model, FeatureCache, ProtocolOptions], Outcome]

PROTOCOL_FUNCTIONS: dict[str, Protocol] = {
    "linear": linear,
    "mlp": mlp,
    "knn": knn,
    "1nn": one_nn,
    "finetune": finetune,
    "distill": distill,
    "consistency": consistency,
}


def run_protocol(
    name: str,
    task: Task,
    encoder: keras.Model,
    cache: FeatureCache | None = None,
    options: ProtocolOptions | None = None,
) -> Outcome:
    """Runs protocol `name` (`kerassl.evaluation.options.PROTOCOLS`) on `task`."""
    if cache is None:
        cache = FeatureCache(encoder, task.x_train, task.x_test)
    return cache.outcome(name, task, options or ProtocolOptions())
