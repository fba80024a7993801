"""PseudoLabelDataset: a trainer reads tensors through a DataLoader, acks after each step, and a
restarted trainer resumes with every unacked label and none it acked."""

from __future__ import annotations

import asyncio
import contextlib

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


async def test_dataloader_workers_are_consumers_and_step_acks(make_config, digits):
    config = make_config(topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    x = np.ascontiguousarray(digits.stream_x[:64])
    async with LabelingServer(config) as server:
        def scenario() -> tuple:
            with LabelerClient(server.address) as client:
                labels = client.label("digits", x, ids=[f"w-{i}" for i in range(64)]).label
            dataset = PseudoLabelDataset(server.address, "digits", "students", "trainer",
                                         with_offsets=True, idle_timeout_s=3.0, max_batch=8)
            loader = DataLoader(dataset, batch_size=8, num_workers=2,
                                multiprocessing_context="spawn")
            offsets: list[int] = []
            for batch in loader:
                with dataset.step(batch):
                    assert batch[0].shape[1:] == (1, 8, 8)
                    offsets.extend(batch[3].tolist())
            dataset.close()
            with LabelerClient(server.address) as client:
                state = client.get_topic("digits", groups=["students"])
            return labels, offsets, state

        labels, offsets, state = await asyncio.get_running_loop().run_in_executor(None, scenario)
    assert sorted(offsets) == list(range(64))  # every label once, across both workers
    assert state.group_lag["students"] == 0 and state.group_committed["students"] == 64


async def test_class_and_weight_filters_skip_but_still_ack(make_config, digits):
    config = make_config(topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    x = np.ascontiguousarray(digits.stream_x[:30])
    async with LabelingServer(config) as server:
        def scenario() -> tuple:
            with LabelerClient(server.address) as client:
                labels = client.label("digits", x, ids=[f"f-{i}" for i in range(30)]).label
            dataset = PseudoLabelDataset(server.address, "digits", "g", "c", classes=[0, 1, 2],
                                         include_samples=False, idle_timeout_s=1.0)
            got = list(dataset)
            dataset.commit()
            dataset.close()
            with LabelerClient(server.address) as client:
                state = client.get_topic("digits", groups=["g"])
            return labels, got, state

        labels, got, state = await asyncio.get_running_loop().run_in_executor(None, scenario)
    wanted = {f"f-{i}" for i in range(30) if labels[i] in (0, 1, 2)}
    assert {sid for sid, _, _ in got} == wanted and all(y in (0, 1, 2) for _, y, _ in got)
    assert state.group_lag["g"] == 0  # the skipped ones were acked too


async def test_batched_dataset_yields_each_delivery_as_tensors(make_config, digits):
    config = make_config(topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    x = np.ascontiguousarray(digits.stream_x[:48])
    async with LabelingServer(config) as server:
        def scenario() -> tuple:
            with LabelerClient(server.address) as client:
                labels = client.label("digits", x, ids=[f"b-{i}" for i in range(48)]).label
                with contextlib.closing(client.subscribe_columns("digits", "sync", "s", max_batch=8)) as batches:
                    first = next(batches)  # the blocking client's columnar subscription
            assert first.offset.tolist() == list(range(8)) and first.samples.shape == (8, 1, 8, 8)
            runs = []
            for group, options in (("low", {"classes": range(5)}), ("first20", {"max_records": 20})):
                dataset = PseudoLabelDataset(server.address, "digits", group, "c", batched=True, with_offsets=True,
                                             max_batch=16, idle_timeout_s=1.0, **options)
                runs.append(list(DataLoader(dataset, batch_size=None)))
                dataset.commit()
                dataset.close()
            with LabelerClient(server.address) as client:
                state = client.get_topic("digits", groups=["low", "first20"])
            return labels, runs, state

        labels, (low, first20), state = await asyncio.get_running_loop().run_in_executor(None, scenario)
    for samples, y, w, offsets in low + first20:
        assert samples.dtype == torch.float32 and samples.shape == (len(y), 1, 8, 8) and len(y) <= 16
        assert y.dtype == torch.int64 and w.dtype == torch.float32 and offsets.dtype == torch.int64
        np.testing.assert_array_equal(samples.numpy(), x[offsets.numpy()])  # one request: offset = row
        np.testing.assert_array_equal(y.numpy(), labels[offsets.numpy()])
    assert torch.cat([b[3] for b in low]).tolist() == [i for i in range(48) if labels[i] < 5]
    assert state.group_lag["low"] == 0  # the other classes were skipped, and acked too
    assert torch.cat([b[3] for b in first20]).tolist() == list(range(20))
    assert state.group_committed["first20"] == 20 and state.group_lag["first20"] == 28


async def test_example_trainer_runs_against_a_live_service(make_config, digits):
    import subprocess
    import sys

    config = make_config(topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    async with LabelingServer(config) as server:
        def scenario() -> str:
            with LabelerClient(server.address) as client:
                client.label("digits", np.ascontiguousarray(digits.stream_x[:40]),
                             ids=[f"e-{i}" for i in range(40)])
            done = subprocess.run([sys.executable, "-m", "pseudostream.clients.examples.train_student",
                                   "--target", server.address, "--max-records", "40"],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            return done.stdout

        out = await asyncio.get_running_loop().run_in_executor(None, scenario)
    assert "trained on 40 pseudo-labels" in out
