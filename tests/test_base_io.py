"""Base files written and deleted in paced steps (imgsearch/index/base.py) stay exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgsearch.index import base as B


def test_a_paced_write_is_the_index_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    monkeypatch.setattr(B, "PACE_BYTES", 1024)  # many steps
    x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    index = faiss.index_factory(16, "IVF8,PQ8x4fs", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, np.arange(2000, dtype=np.int64) * 3)
    B.write_paced(index, tmp_path / "paced.faiss")
    faiss.write_index(index, str(tmp_path / "plain.faiss"))
    paced = (tmp_path / "paced.faiss").read_bytes()
    assert len(paced) > 10 * 1024 and paced == (tmp_path / "plain.faiss").read_bytes()
    again = faiss.read_index(str(tmp_path / "paced.faiss"))
    assert again.search(x[:5], 3)[1].tolist() == index.search(x[:5], 3)[1].tolist()


def test_a_paced_delete_removes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "PACE_BYTES", 1000)
    big, small = tmp_path / "big", tmp_path / "small"
    big.write_bytes(b"x" * 10_500)
    small.write_bytes(b"y" * 10)
    B.unlink_paced(big)
    B.unlink_paced(small)
    assert not big.exists() and not small.exists()
