"""The idempotency window's decision blobs: the column-wise encoder writes what json.dumps would,
and decode gives the decisions back, for multi-class and multi-label decisions."""

from __future__ import annotations

import json

import numpy as np

from pseudostream.server.idempotency import _encode_one, decode_decisions, encode_decisions
from pseudostream.server.selection import Decisions


def _decisions(n: int, multilabel: bool = False) -> Decisions:
    rng = np.random.default_rng(1)
    threshold = np.full(n, 0.95, np.float32)
    threshold[0] = np.inf  # a class that can never be accepted yet
    return Decisions(accept=rng.random(n) > 0.4, label=rng.integers(0, 5, n),
                     confidence=rng.random(n).astype(np.float32), weight=rng.random(n).astype(np.float32),
                     threshold=threshold, reason=np.array(["", "below_class_threshold", "x\"y"] * n)[:n],
                     positive=rng.random((n, 5)) > 0.5 if multilabel else None,
                     negative=rng.random((n, 5)) > 0.8 if multilabel else None)


def test_fast_encoder_matches_json_dumps_and_round_trips():
    d, offsets = _decisions(50), np.arange(100, 150)
    blobs = encode_decisions(d, offsets, 'v"2+prior_em.3')
    assert [json.loads(b) for b in blobs] == [json.loads(_encode_one(d, offsets, 'v"2+prior_em.3', i))
                                              for i in range(50)]
    back, offs, versions = decode_decisions(blobs, 5)
    assert np.array_equal(back.accept, d.accept) and np.array_equal(back.label, d.label)
    assert np.array_equal(back.confidence, d.confidence) and np.array_equal(back.threshold, d.threshold)
    assert list(back.reason) == list(d.reason) and list(offs) == list(offsets)
    assert set(versions) == {'v"2+prior_em.3'}


def test_multilabel_blobs_keep_their_class_lists():
    d = _decisions(8, multilabel=True)
    back, _, _ = decode_decisions(encode_decisions(d, np.arange(8), "1"), 5)
    assert np.array_equal(back.positive, d.positive) and np.array_equal(back.negative, d.negative)
