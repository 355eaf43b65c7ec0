from regatt_export.splits import landmark_split


def test_split_is_disjoint_and_follows_the_rule(tmp_path):
    names = [f"lm{i:02d}" for i in range(12)]
    for n in reversed(names):
        (tmp_path / n).mkdir()
    (tmp_path / "SOURCES.csv").write_text("x")
    s = landmark_split(tmp_path)
    assert s["test"] == ["lm04", "lm09"]
    assert s["val"] == ["lm03", "lm08"]
    assert sorted(s["train"] + s["val"] + s["test"]) == names
    assert not set(s["train"]) & set(s["test"])


def test_split_refuses_a_folder_without_landmarks(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="no landmark sub-folders"):
        landmark_split(tmp_path)
