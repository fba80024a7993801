"""PseudoLabelDataset: a trainer reads tensors through a DataLoader, acks after each step, and a
restarted trainer resumes with every unacked label and none it acked."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pseudostream.clients.dataset import PseudoLabelDataset
from pseudostream.clients.sync import LabelerClient
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration


def _train_some(address: str, batches: int) -> tuple[list[str], int]:
    dataset = PseudoLabelDataset(address, "digits", "students", "s0", idle_timeout_s=1.0,
                                 include_samples=True)
    seen: list[int] = []
    try:
        for step, (x, y, w) in enumerate(DataLoader(dataset, batch_size=8)):
            assert x.shape == (len(y), 1, 8, 8) and x.dtype == torch.float32
            assert torch.all(w == 1.0)
            seen.extend(y.tolist())
            dataset.commit()
            if step + 1 == batches:
                break
    finally:
        dataset.close()
    return seen, dataset.committed_offset


async def test_dataset_acks_after_steps_and_resumes(make_config, digits):
    config = make_config(topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    x = np.ascontiguousarray(digits.stream_x[:40])
    async with LabelingServer(config) as server:
        loop = asyncio.get_running_loop()

        def scenario() -> tuple:
            with LabelerClient(server.address) as client:
                labels = client.label("digits", x, ids=[f"ds-{i}" for i in range(40)]).label
            first, committed = _train_some(server.address, batches=2)  # 16 acked, then "crash"
            rest, _ = _train_some(server.address, batches=100)  # restarted trainer
            with LabelerClient(server.address) as client:
                state = client.get_topic("digits", groups=["students"])
            return labels, first, committed, rest, state

        labels, first, committed, rest, state = await loop.run_in_executor(None, scenario)
    assert len(first) == 16 and committed == 16
    assert len(rest) == 24  # exactly the unacked ones, none of the acked
    assert sorted(first + rest) == sorted(labels.tolist())
    assert state.group_lag["students"] == 0
