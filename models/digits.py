"""Accuracy that is real: an MLP trained on scikit-learn's bundled digits, pruned to 90%,
fine-tuned under its mask, compiled by sparsec, and measured on held-out images.

The recipe (``run``), every step seeded so two runs give the same numbers:

1. ``data``: the 1797 8x8 digits of ``sklearn.datasets.load_digits`` (bundled, no download),
   pixels scaled to [0, 1], a stratified 80/20 split with ``random_state=seed``.
2. ``DigitsMLP`` 64 -> 256 -> 256 -> 10 (ReLU), trained with Adam on one CPU thread.
3. Magnitude pruning of every Linear to ``sparsity`` (per layer or global,
   ``sparsec.models.prune.prune_module``), then ``keep_mask`` (``torch.nn.utils.prune``
   masks) and a short fine-tune that keeps the zeros.
4. ``sparsec.compile`` of the masked module (the masks are applied during capture) for the
   whole test set as one batch; predictions compared with the pruned torch model's.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsec.models import prune


@dataclass
class Split:
    x_train: np.ndarray  # [N, 64] float32 in [0, 1]
    y_train: np.ndarray  # [N] int64
    x_test: np.ndarray
    y_test: np.ndarray


def data(seed: int = 0, test_size: float = 0.2) -> Split:
    """The digits, scaled to [0, 1], split stratified with ``random_state=seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return Split(xtr, ytr, xte, yte)


class DigitsMLP(nn.Module):
    """x[B, 64] -> fc1 -> relu -> fc2 -> relu -> fc3 -> logits[B, 10]."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@contextlib.contextmanager
def _one_thread():
    """Single-threaded torch while training (bit-for-bit repeatable), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(model: nn.Module, split: Split, *, epochs: int, lr: float, seed: int,
          batch: int = 64) -> nn.Module:
    """Adam on cross-entropy, shuffled mini-batches from a seeded generator; in place."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with _one_thread():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch):
                idx = order[i:i + batch]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    return model.eval()


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Class predictions of a torch module or a sparsec CompiledModel."""
    if isinstance(model, nn.Module):
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()
    else:
        logits = model(x)
    return logits.argmax(axis=1)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean())


@dataclass
class Result:
    dense_accuracy: float
    pruned_accuracy: float
    compiled_accuracy: float
    agreement: float  # fraction of test images where compiled and pruned torch agree
    density: dict[str, float]  # per pruned layer, as torch holds it
    report: list[dict]  # the compiled model's per-layer report
    seconds: dict[str, float] = field(default_factory=dict)
    compiled: Any = None

    def summary(self) -> str:
        return (f"dense {self.dense_accuracy:.2%}  pruned {self.pruned_accuracy:.2%}  "
                f"compiled {self.compiled_accuracy:.2%}  agreement {self.agreement:.2%}")


def run(sparsity: float = 0.9, *, scope: str = "layer", seed: int = 0, epochs: int = 30,
        finetune_epochs: int = 40, hidden: int = 256, target: str = "cpu") -> Result:
    """The whole recipe; see the module docstring."""
    import sparsec

    seconds: dict[str, float] = {}
    split = data(seed)
    torch.manual_seed(seed)
    model = DigitsMLP(hidden)

    t = time.perf_counter()
    train(model, split, epochs=epochs, lr=1e-3, seed=seed)
    seconds["train"] = time.perf_counter() - t
    dense_acc = accuracy(predict(model, split.x_test), split.y_test)

    t = time.perf_counter()
    prune.prune_module(model, "unstructured", sparsity, scope=scope)
    prune.keep_mask(model)
    train(model, split, epochs=finetune_epochs, lr=1e-3, seed=seed + 1)
    seconds["prune_finetune"] = time.perf_counter() - t
    pruned_pred = predict(model, split.x_test)
    density = {k: float(m.mean()) for k, m in prune.torch_masks(model).items()}

    t = time.perf_counter()
    cm = sparsec.compile(model, example_inputs=(torch.from_numpy(split.x_test),), target=target)
    seconds["compile"] = time.perf_counter() - t
    compiled_pred = predict(cm, split.x_test)

    return Result(
        dense_accuracy=dense_acc,
        pruned_accuracy=accuracy(pruned_pred, split.y_test),
        compiled_accuracy=accuracy(compiled_pred, split.y_test),
        agreement=float((compiled_pred == pruned_pred).mean()),
        density=density,
        report=cm.report,
        seconds={k: round(v, 2) for k, v in seconds.items()},
        compiled=cm,
    )
