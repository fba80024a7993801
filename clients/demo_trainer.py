"""The demo's student trainer: learns only from the pseudo-labels the service delivers.

It subscribes through ``PseudoLabelDataset``, takes one optimizer step per delivered batch and
acks after each step (at-least-once: a crash before the ack means the labels come again). It
keeps what it received in a replay buffer and finishes with more epochs over it, with the same
recipe as the teacher (``models.demo_teacher.RECIPE``), so the two are compared fairly.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pseudostream.clients.dataset import PseudoLabelDataset

__all__ = ["StudentTrainer"]

log = logging.getLogger(__name__)


class StudentTrainer:
    """Run ``run()`` on a thread; call ``expect(n)`` once the number of accepted labels is known."""

    def __init__(self, target: str, topic: str, *, group: str = "students",
                 consumer: str = "student-0", seed: int = 0) -> None:
        from pseudostream.models.cnn import DigitsCNN
        from pseudostream.models.demo_teacher import RECIPE

        self.target, self.topic, self.group, self.consumer = target, topic, group, consumer
        self.recipe = RECIPE
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.model = DigitsCNN()
        self.trained_on = 0
        self.error: BaseException | None = None
        self._expected: int | None = None
        self._expected_set = threading.Event()
        self._xs: list[torch.Tensor] = []
        self._ys: list[torch.Tensor] = []
        self._ws: list[torch.Tensor] = []

    def expect(self, n: int) -> None:
        """Tell the trainer how many labels the stream accepted in total (it stops after them)."""
        self._expected = n
        self._expected_set.set()

    def run(self) -> None:
        """Train online on the subscription, then finish the recipe's epochs on the buffer."""
        from pseudostream.models.training import torch_threads

        try:
            with torch_threads(1):  # the service shares these cores; one thread trains fastest
                self._online()
                self._finish()
        except BaseException as exc:  # reported to the demo's main thread
            self.error = exc

    def _online(self) -> None:
        dataset = PseudoLabelDataset(self.target, self.topic, self.group, self.consumer,
                                     idle_timeout_s=0.5)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.recipe["lr"])
        try:
            while not (self._expected_set.is_set() and self.trained_on >= (self._expected or 0)):
                # Each pass ends after 0.5 s without labels; the next pass resumes the
                # subscription where the acks left it.
                loader = DataLoader(dataset, batch_size=self.recipe["batch_size"])
                for x, y, w in loader:
                    self._step(optimizer, x, y, w)
                    dataset.commit()  # ack after the optimizer step that used them
                    self._xs.append(x)
                    self._ys.append(y)
                    self._ws.append(w)
                    self.trained_on += len(y)
        finally:
            dataset.close()

    def _step(self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              w: torch.Tensor) -> None:
        if len(y) < 2:
            return  # BatchNorm cannot train on a single sample
        self.model.train()
        loss = (F.cross_entropy(self.model(x)[0], y, reduction="none") * w.float()).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def _finish(self) -> None:
        from pseudostream.models.training import train_classifier

        if not self._xs:
            raise RuntimeError("the student received no pseudo-labels")
        train_classifier(self.model, torch.cat(self._xs).numpy(), torch.cat(self._ys).numpy(),
                         weight=torch.cat(self._ws).numpy(), epochs=self.recipe["epochs"] - 1,
                         batch_size=self.recipe["batch_size"], lr=self.recipe["lr"],
                         seed=self.seed)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """Student accuracy on (x, y)."""
        from pseudostream.models.training import evaluate

        return evaluate(self.model, x, y)
