"""Fuzzing the run-folder readers: mutated checkpoints and configs of a real run open as a model or
fail with one DataError sentence; nothing else escapes, nothing hangs, memory stays bounded."""

from __future__ import annotations

import io
import random
import resource
import shutil
import time
import zipfile

import pytest

from scene3d.errors import DataError
from scene3d.runs import CHECKPOINT, CONFIG, open_run

MUTANTS = 150
SECONDS = 60.0  # for all of them; one takes about 15 ms
GROWTH_KIB = 300_000  # peak RSS growth allowed over the whole run (the real checkpoint is 8 MB)


def _pickle_span(data: bytes) -> tuple[int, int]:
    """Where data.pkl's bytes lie in a torch.save archive."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    return start, info.file_size


def _mutate(data: bytes, rng: random.Random, pickle_span: tuple[int, int] | None) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["flip", "truncate", "extend", "pickle"] if pickle_span else ["flip", "truncate", "extend", "lines"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            j = rng.randrange(len(b))
            b[j] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        b = b[: rng.randrange(len(b))]
    elif kind == "extend":
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "pickle":  # bytes of the pickle, where the structure lives
        start, size = pickle_span
        for _ in range(rng.randint(1, 4)):
            b[start + rng.randrange(size)] = rng.randrange(256)
    else:  # config lines dropped, repeated or swapped
        lines = bytes(b).splitlines(keepends=True)
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], (lines[i] if rng.random() < 0.5 else b"")
        b = bytearray(b"".join(lines))
    return bytes(b)


@pytest.mark.parametrize("which", [CHECKPOINT, CONFIG])
def test_mutated_run_files_open_or_fail_with_one_sentence(short_run, tmp_path, which):
    run = tmp_path / "run"
    shutil.copytree(short_run, run, ignore=shutil.ignore_patterns("renders"))
    original = (run / which).read_bytes()
    span = _pickle_span(original) if which == CHECKPOINT else None
    rng = random.Random(16)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, outcomes = time.monotonic(), {"opened": 0, "refused": 0}
    for _ in range(MUTANTS):
        (run / which).write_bytes(_mutate(original, rng, span))
        try:
            open_run(run).load_model()
            outcomes["opened"] += 1
        except DataError as e:
            assert "\n" not in str(e) and str(run) in str(e)
            outcomes["refused"] += 1
        assert time.monotonic() - start < SECONDS
    assert outcomes["refused"] >= MUTANTS // 4 and outcomes["opened"] >= 1, outcomes  # both paths were exercised
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < GROWTH_KIB
