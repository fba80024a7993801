"""Request validation: each mistake names what was expected; tensors decode without copies."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pseudostream.clients.client import make_label_request
from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.server.backends.base import TeacherMetadata
from pseudostream.server.codec import MAX_ID_LENGTH, decode_label_request, decode_tensor, encode_tensor
from pseudostream.server.errors import InvalidInput

TEACHER = TeacherMetadata(name="t", version="1", task="multiclass", classes=("a", "b"),
                          input_name="input", input_shape=(3,), input_dtype=np.dtype(np.float32))


def test_tensor_round_trip_is_a_zero_copy_view():
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    t = encode_tensor(a)
    b = decode_tensor(t)
    assert np.array_equal(a, b) and not b.flags.writeable and not b.flags.owndata


def test_big_endian_arrays_are_sent_little_endian():
    a = np.arange(4, dtype=">f4")
    assert np.array_equal(decode_tensor(encode_tensor(a)), a.astype("<f4"))


def test_valid_request_decodes_with_metadata():
    x = np.ones((2, 3), np.float32)
    req = make_label_request("topic", x, ["a", "b"], metadata=[{"k": "1"}, {}])
    parsed = decode_label_request(req, TEACHER, max_sample_bytes=1024)
    assert parsed.ids == ["a", "b"] and parsed.metadata == [{"k": "1"}, {}]
    assert parsed.inputs.shape == (2, 3)


def test_ids_made_for_samples_sent_without_any_never_repeat_across_producers():
    """Two producer processes labeling without ids (or one, restarted) must not send the same
    id for different samples: the service would answer the second with the first's decision."""
    code = ("import numpy as np; from pseudostream.clients.client import make_label_request as m; "
            "x = np.zeros((3, 2), np.float32); print(' '.join(list(m('t', x).ids) + list(m('t', x).ids)))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            .stdout.split() for _ in range(2)]
    assert all(len(set(ids)) == 6 for ids in runs)  # unique within a process
    assert not set(runs[0]) & set(runs[1])  # and across processes


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: make_label_request("t", np.ones((2, 3), np.float64), ["a", "b"]), "expects float32"),
        (lambda: make_label_request("t", np.ones((2, 4), np.float32), ["a", "b"]), "expected [2, 3]"),
        (lambda: make_label_request("t", np.ones((2, 3), np.float32), ["a", "a"]), "duplicate"),
        (lambda: make_label_request("t", np.ones((1, 3), np.float32), ["x" * (MAX_ID_LENGTH + 1)]),
         f"1..{MAX_ID_LENGTH} characters"),
        (lambda: make_label_request("t", np.ones((1, 3), np.float32), [""]), "1..256 characters"),
        (lambda: pb.LabelRequest(topic="t"), "empty batch"),
        (lambda: pb.LabelRequest(topic="t", ids=["a"], inputs=pb.Tensor(
            data=b"\0" * 12, shape=[], dtype="float32")), "must be non-empty"),
        (lambda: pb.LabelRequest(topic="t", ids=["a"], inputs=pb.Tensor(
            data=b"\0" * 12, shape=[1, -3], dtype="float32")), "sizes >= 0"),
    ],
)
def test_invalid_requests_say_what_was_expected(build, message):
    with pytest.raises(InvalidInput) as info:
        decode_label_request(build(), TEACHER, max_sample_bytes=1024)
    assert message in str(info.value)


def test_samples_over_the_size_limit_are_refused():
    req = make_label_request("t", np.ones((2, 3), np.float32), ["a", "b"])
    with pytest.raises(InvalidInput, match="12 bytes per sample, limit 8"):
        decode_label_request(req, TEACHER, max_sample_bytes=8)
