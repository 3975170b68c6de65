"""CostMatrix: constructors, validation, files."""
import json

import numpy as np
import pytest

from costsmooth import CostMatrix


def test_seedwise_and_pairwise():
    c = CostMatrix.seedwise(4, [1])
    assert c.seed_classes == [1] and c.targets(1) == [0, 2, 3] and c.targets(0) == [] and c.is_binary
    p = CostMatrix.pairwise(4, {0: [2, 3], 1: [3]})
    assert p.seed_classes == [0, 1] and p.targets(0) == [2, 3] and p.targets(1) == [3]
    assert "0->{2,3}" in repr(p)


def test_real_valued_matrix():
    m = np.zeros((3, 3))
    m[0, 1], m[0, 2] = 0.5, 2.0
    c = CostMatrix(m)
    assert not c.is_binary and c.targets(0) == [1, 2]


@pytest.mark.parametrize("matrix,match", [
    (np.zeros((3, 4)), "must be square"),
    (np.array([[0, -1], [0, 0]]), "non-negative"),
    (np.array([[0, np.nan], [0, 0]]), "finite"),
    (np.array([[1, 1], [0, 0]]), "zero diagonal"),
    (np.zeros((3, 3)), "no positive entry"),
])
def test_malformed_matrices(matrix, match):
    with pytest.raises(ValueError, match=match):
        CostMatrix(matrix)


def test_size_checked_against_model():
    with pytest.raises(ValueError, match="cost matrix must be 10x10 for the model with 10 classes, got 9x9"):
        CostMatrix.seedwise(9, [0]).check_num_classes(10)


def test_bad_classes():
    with pytest.raises(ValueError, match=r"seed class must be an integer in \[0, 3\)"):
        CostMatrix.seedwise(3, [3])
    with pytest.raises(ValueError, match="cannot be its own target"):
        CostMatrix.pairwise(3, {1: [1]})


def test_files_roundtrip(tmp_path):
    c = CostMatrix.pairwise(3, {0: [1]})
    np.savetxt(tmp_path / "c.csv", c.matrix, delimiter=",")
    np.save(tmp_path / "c.npy", c.matrix)
    (tmp_path / "a.json").write_text(json.dumps(c.matrix.tolist()))
    (tmp_path / "b.json").write_text(json.dumps({"num_classes": 3, "pairs": {"0": [1]}}))
    (tmp_path / "s.json").write_text(json.dumps({"num_classes": 3, "seed_classes": [2]}))
    for name in ("c.csv", "c.npy", "a.json", "b.json"):
        assert CostMatrix.from_file(str(tmp_path / name)) == c
    assert CostMatrix.from_file(str(tmp_path / "s.json")) == CostMatrix.seedwise(3, [2])
    assert CostMatrix.from_json(c.to_json()) == c


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cost matrix file not found"):
        CostMatrix.from_file(str(tmp_path / "missing.csv"))
    (tmp_path / "bad.csv").write_text("0,1\n1,x\n")
    with pytest.raises(ValueError, match="cannot read cost matrix"):
        CostMatrix.from_file(str(tmp_path / "bad.csv"))
    np.savetxt(tmp_path / "small.csv", CostMatrix.seedwise(3, [0]).matrix, delimiter=",")
    with pytest.raises(ValueError, match="must be 4x4"):
        CostMatrix.from_file(str(tmp_path / "small.csv"), num_classes=4)
