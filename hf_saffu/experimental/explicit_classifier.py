"""Classifiers fitted by the explicit solution of softmax layers (no gradient), on top of `hf_saffu.explicit`.

One layer (`ExplicitSoftmaxClassifier`): p(y | x) = softmax(x U + b) on non-negative features x. One pass
over (features, labels) batches accumulates

    F = sum_m x_m^T e_{y_m}   (D x N, float64)     and     K = mean_m ||x_m||_1   (the priming number)

and the layer is the explicit solution U = ln(F + alpha), b_j = -(K - 1) ln phi_j, phi_j = sum_i (F_ij + alpha);
see docs/DESIGN.md section 1 and `hf_saffu.explicit.solve_softmax`.

Two layers (`ExplicitTwoLayerClassifier`), fitted layer-locally (docs/DESIGN.md section 5):

    h = softmax(x U1 + b1)     hidden distribution over H units, fitted against label embeddings l(y)
    p = softmax(h U2 + b2)     output layer, fitted on the hidden distributions h

where l(y) is the bit-cipher vector (H bits, unit L1) of label y's frequency rank. Since l is linear in the
one-hot label, the hidden statistics sum_m x_m^T l(y_m) = F L need no second pass (L: the N x H label
embeddings); the output layer takes one more pass to accumulate sum_m h_m^T e_{y_m}.

Features and labels may be torch tensors or numpy arrays; outputs are float64 torch tensors.
"""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..bit_cipher import bit_cipher_vectors, frequency_ranks
from ..explicit import Cooccurrence, ExplicitStatisticsError, check_statistics, solve_softmax

ArrayLike = torch.Tensor | np.ndarray
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def as_features(features: ArrayLike) -> torch.Tensor:
    """A (M, D) float64 tensor of the features."""
    features = torch.as_tensor(features).to(torch.float64)
    if features.ndim != 2:
        raise ValueError(f"features must have shape (num_examples, num_features), got {tuple(features.shape)}")
    return features


def as_targets(labels: ArrayLike, num_classes: int) -> torch.Tensor:
    """Class ids as an int64 (M,) tensor, or target distributions as a float64 (M, N) tensor; checked."""
    labels = torch.as_tensor(labels)
    if labels.is_floating_point():
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            shape = tuple(labels.shape)
            raise ValueError(f"target distributions must have shape (num_examples, {num_classes}), got {shape}")
        return labels.to(torch.float64)
    labels = labels.reshape(-1).to(torch.int64)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        low, high = labels.min().item(), labels.max().item()
        raise ValueError(f"class ids must lie in [0, {num_classes}), got ids from {low} to {high}")
    return labels


def accumulate_statistics(
    batches: Iterable[tuple[ArrayLike, ArrayLike]], num_classes: int
) -> tuple[Cooccurrence, torch.Tensor]:
    """One pass: the co-occurrences F = sum_m x_m^T y_m (with K) and the label mass n_j = sum_m y_mj."""
    statistics, label_mass = None, torch.zeros(num_classes, dtype=torch.float64)
    for features, labels in batches:
        features, targets = as_features(features), as_targets(labels, num_classes)
        check_statistics("features", features)
        if statistics is None:
            statistics = Cooccurrence.zeros(features.shape[1], num_classes)
        if features.shape[1] != statistics.counts.shape[0]:
            raise ValueError(f"a batch has {features.shape[1]} features, the first had {statistics.counts.shape[0]}")
        if len(targets) != len(features):
            raise ValueError(f"a batch has {len(features)} feature rows but {len(targets)} labels")
        statistics.add(features, targets)
        label_mass += targets.sum(0) if targets.is_floating_point() else torch.bincount(targets, minlength=num_classes)
    if statistics is None:
        raise ExplicitStatisticsError("fit() got no batches: the explicit solution needs at least one example")
    return statistics, label_mass


class ExplicitClassifierMixin:
    """predict / score / cross-entropy / save / load shared by the explicit classifiers.

    Subclasses define `log_proba`, `config` (a json-able dict of constructor arguments and fitted scalars),
    `tensors` (name -> tensor) and `from_saved(config, tensors)`.
    """

    def predict_proba(self, features: ArrayLike) -> torch.Tensor:
        """p(y | x), shape (M, N)."""
        return self.log_proba(features).exp()

    def predict(self, features: ArrayLike) -> torch.Tensor:
        """argmax_y p(y | x), int64 shape (M,)."""
        return self.log_proba(features).argmax(dim=-1)

    def score(self, features: ArrayLike, labels: ArrayLike) -> float:
        """Accuracy: the fraction of examples whose predicted class is the label."""
        labels = torch.as_tensor(labels).reshape(-1).to(torch.int64)
        return (self.predict(features) == labels).to(torch.float64).mean().item()

    def cross_entropy(self, features: ArrayLike, labels: ArrayLike) -> float:
        """Mean cross-entropy -mean_m ln p(y_m | x_m) in nats."""
        labels = torch.as_tensor(labels).reshape(-1).to(torch.int64)
        return -self.log_proba(features).gather(1, labels[:, None]).mean().item()

    def save(self, directory: str | Path) -> None:
        """Write `model.safetensors` (the parameters) and `config.json` into `directory`."""
        tensors = self.tensors()
        if any(tensor is None for tensor in tensors.values()):
            raise RuntimeError("this classifier is not fitted yet: call fit() before save()")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, directory / WEIGHTS_NAME)
        config = {"classifier": type(self).__name__, **self.config()}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path):
        """The classifier written by `save`."""
        directory = Path(directory)
        config = json.loads((directory / CONFIG_NAME).read_text())
        saved_class = config.pop("classifier")
        if saved_class != cls.__name__:
            raise ValueError(f"{directory} holds a saved {saved_class}, not a {cls.__name__}")
        return cls.from_saved(config, load_file(directory / WEIGHTS_NAME))


class ExplicitSoftmaxClassifier(ExplicitClassifierMixin):
    """A softmax layer p(y | x) = softmax(x U + b) fitted by its explicit solution in one pass.

    Args:
        num_classes: N, the number of classes (or the width of target distributions).
        smoothing: alpha > 0, the additive floor of the co-occurrences in ln(F + alpha).
    """

    def __init__(self, num_classes: int, smoothing: float = 1e-2):
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.weight: torch.Tensor | None = None  # U, (D, N) float64
        self.bias: torch.Tensor | None = None  # b, (N,) float64
        self.priming_number: float | None = None  # K

    def fit(self, batches: Iterable[tuple[ArrayLike, ArrayLike]]) -> "ExplicitSoftmaxClassifier":
        """Fit from an iterable of (features (M, D) >= 0, labels) batches, in one pass.

        Labels are class ids (M,) or target distributions (M, N). Raises `ExplicitStatisticsError` (a
        ValueError) on negative or non-finite features and on empty data.
        """
        statistics, _ = accumulate_statistics(batches, self.num_classes)
        return self.fit_statistics(statistics.counts, statistics.priming_number)

    def fit_statistics(self, counts: torch.Tensor, priming_number: float) -> "ExplicitSoftmaxClassifier":
        """Solve from co-occurrences F (D, N) and the priming number K accumulated elsewhere (e.g. in shards)."""
        self.weight, self.bias = solve_softmax(counts, priming_number, self.smoothing)
        self.priming_number = priming_number
        return self

    def logits(self, features: ArrayLike) -> torch.Tensor:
        """x U + b, shape (M, N)."""
        if self.weight is None:
            raise RuntimeError("this classifier is not fitted yet: call fit() first")
        return as_features(features) @ self.weight + self.bias

    def log_proba(self, features: ArrayLike) -> torch.Tensor:
        """ln p(y | x), shape (M, N)."""
        return torch.log_softmax(self.logits(features), dim=-1)

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "smoothing": self.smoothing, "priming_number": self.priming_number}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias}

    @classmethod
    def from_saved(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "ExplicitSoftmaxClassifier":
        classifier = cls(config["num_classes"], config["smoothing"])
        classifier.weight, classifier.bias = tensors["weight"], tensors["bias"]
        classifier.priming_number = config["priming_number"]
        return classifier


class ExplicitTwoLayerClassifier(ExplicitClassifierMixin):
    """softmax(softmax(x U1 + b1) U2 + b2), each layer fitted by its explicit solution, bottom-up.

    The hidden layer's targets are the bit-cipher label embeddings l(y) with `hidden_size` bits
    (2^hidden_size - 1 >= num_classes); `fit` takes two passes, so `batches` must be re-iterable (a list,
    a DataLoader), not a generator.

    With hidden_size > num_classes every label gets a one-bit code and the other hidden units get no target
    mass: their empty columns of F L receive the bias -(K - 1) ln(D alpha), far above the others when K > 1,
    which favours them for inputs whose L1 mass is below K. Give every input row the same L1 mass (then the
    priming-number bias is exact) or keep hidden_size <= num_classes.

    Args:
        num_classes: N, the number of classes.
        hidden_size: H, the number of hidden units (bits of the label embeddings).
        smoothing: alpha > 0 of both layers.
    """

    def __init__(self, num_classes: int, hidden_size: int, smoothing: float = 1e-2):
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.hidden = ExplicitSoftmaxClassifier(hidden_size, smoothing)
        self.output = ExplicitSoftmaxClassifier(num_classes, smoothing)
        self.label_embeddings: torch.Tensor | None = None  # L, (N, H) float64, row y is l(y)

    def fit(self, batches: Iterable[tuple[ArrayLike, ArrayLike]]) -> "ExplicitTwoLayerClassifier":
        """Hidden layer from F L (first pass), then the output layer from the hidden distributions (second)."""
        if isinstance(batches, Iterator):
            raise TypeError("the two-layer fit takes two passes: pass a re-iterable (e.g. a list), not an iterator")
        statistics, label_mass = accumulate_statistics(batches, self.num_classes)
        ranks = frequency_ranks(label_mass)
        self.label_embeddings = bit_cipher_vectors(ranks, self.hidden_size).to(torch.float64)
        hidden_statistics = statistics.map_targets(self.label_embeddings)  # F L
        self.hidden.fit_statistics(hidden_statistics.counts, hidden_statistics.priming_number)
        self.output.fit((self.hidden.predict_proba(features), labels) for features, labels in batches)
        return self

    def log_proba(self, features: ArrayLike) -> torch.Tensor:
        """ln p(y | x), shape (M, N)."""
        return self.output.log_proba(self.hidden.predict_proba(features))

    def config(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "hidden_size": self.hidden_size,
            "smoothing": self.hidden.smoothing,
            "priming_numbers": [self.hidden.priming_number, self.output.priming_number],
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "hidden.weight": self.hidden.weight,
            "hidden.bias": self.hidden.bias,
            "output.weight": self.output.weight,
            "output.bias": self.output.bias,
            "label_embeddings": self.label_embeddings,
        }

    @classmethod
    def from_saved(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "ExplicitTwoLayerClassifier":
        classifier = cls(config["num_classes"], config["hidden_size"], config["smoothing"])
        classifier.hidden.priming_number, classifier.output.priming_number = config["priming_numbers"]
        classifier.hidden.weight, classifier.hidden.bias = tensors["hidden.weight"], tensors["hidden.bias"]
        classifier.output.weight, classifier.output.bias = tensors["output.weight"], tensors["output.bias"]
        classifier.label_embeddings = tensors["label_embeddings"]
        return classifier
