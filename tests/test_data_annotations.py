"""Dataset readers: each official layout, built in a temporary folder, parsed to (path, label)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynapp.data.catalog import DATASETS, read_annotations


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_dataset_names():
    assert set(DATASETS) >= {"ucf101", "hmdb51", "kinetics", "minikinetics", "ssv1", "list", "folder"}
    with pytest.raises(ValueError, match="unknown dataset"):
        read_annotations("ucf-101", ".")


def test_ucf101_classind_is_one_based_and_splits_differ(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    _write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    _write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
           "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\nYoYo/v_YoYo_g09_c01.avi 3\r\n")
    _write(lists / "testlist01.txt", "YoYo/v_YoYo_g01_c01.avi\r\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n")
    _write(lists / "trainlist02.txt", "YoYo/v_YoYo_g01_c01.avi 3\n")
    videos = tmp_path / "UCF-101"
    videos.mkdir()
    train = read_annotations("ucf101", tmp_path, split=1, train=True)
    assert train.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert [(a.path, a.label) for a in train.items] == [
        (videos / "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
        (videos / "HandstandPushups/v_HandStandPushups_g08_c01.avi", 1),
        (videos / "YoYo/v_YoYo_g09_c01.avi", 2),
    ]
    test = read_annotations("ucf101", tmp_path, split=1, train=False)
    assert [(a.path.name, a.label) for a in test.items] == [("v_YoYo_g01_c01.avi", 2), ("v_ApplyEyeMakeup_g01_c01.avi", 0)]
    assert [a.label for a in read_annotations("ucf101", tmp_path, split=2).items] == [2]
    with pytest.raises(ValueError, match="splits 1..3"):
        read_annotations("ucf101", tmp_path, split=4)


def test_ucf101_frame_folder_instead_of_video_and_label_mismatch(tmp_path):
    _write(tmp_path / "classInd.txt", "1 A\n2 B\n")
    _write(tmp_path / "trainlist01.txt", "A/v_A_g01_c01.avi 1\n")
    (tmp_path / "A" / "v_A_g01_c01").mkdir(parents=True)  # frames extracted, no .avi
    items = read_annotations("ucf101", tmp_path).items
    assert items[0].path == tmp_path / "A" / "v_A_g01_c01"
    _write(tmp_path / "trainlist01.txt", "A/v_A_g01_c01.avi 2\n")
    with pytest.raises(ValueError, match="label 2"):
        read_annotations("ucf101", tmp_path)


def test_hmdb51_flags_select_train_and_test(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    _write(splits / "brush_hair_test_split1.txt", "a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    _write(splits / "wave_test_split1.txt", "d.avi 2\ne.avi 1\n")
    _write(splits / "wave_test_split2.txt", "d.avi 1\ne.avi 2\n")
    _write(splits / "brush_hair_test_split2.txt", "a.avi 2\n")
    videos = tmp_path / "hmdb51_org"
    videos.mkdir()
    train = read_annotations("hmdb51", tmp_path, split=1, train=True)
    assert train.classes == ["brush_hair", "wave"]
    assert [(a.path, a.label) for a in train.items] == [(videos / "brush_hair/a.avi", 0), (videos / "wave/e.avi", 1)]
    test = read_annotations("hmdb51", tmp_path, split=1, train=False)
    assert [(a.path.name, a.label) for a in test.items] == [("b.avi", 0), ("d.avi", 1)]
    assert [a.path.name for a in read_annotations("hmdb51", tmp_path, split=2, train=False).items] == ["a.avi", "e.avi"]
    with pytest.raises(FileNotFoundError, match="split3"):
        read_annotations("hmdb51", tmp_path, split=3)


def _kinetics(root: Path) -> None:
    header = "label,youtube_id,time_start,time_end,split\n"
    _write(root / "annotations/train.csv", header + "abseiling,aaa,10,20,train\n"
           '"tying tie",bbb,0,10,train\nzumba,ccc,5,15,train\nabseiling,ddd,1,11,train\n')
    _write(root / "annotations/validate.csv", header + "zumba,eee,30,40,validate\n")
    _touch(root / "train/abseiling/aaa_000010_000020.mp4")
    _touch(root / "train/tying_tie/bbb_000000_000010.mp4")  # underscores for spaces
    _touch(root / "val/zumba/eee_000030_000040.mp4")


def test_kinetics_csv_and_file_naming(tmp_path):
    _kinetics(tmp_path)
    train = read_annotations("kinetics", tmp_path, train=True)
    assert train.classes == ["abseiling", "tying tie", "zumba"]
    assert [(a.path.relative_to(tmp_path).as_posix(), a.label) for a in train.items] == [
        ("train/abseiling/aaa_000010_000020.mp4", 0),
        ("train/tying_tie/bbb_000000_000010.mp4", 1),
        ("train/zumba/ccc_000005_000015.mp4", 2),  # missing on disk: kept, reported when loaded
        ("train/abseiling/ddd_000001_000011.mp4", 0),
    ]
    val = read_annotations("kinetics", tmp_path, train=False)
    assert [(a.path.relative_to(tmp_path).as_posix(), a.label) for a in val.items] == [
        ("val/zumba/eee_000030_000040.mp4", 2)]


def test_minikinetics_subset_from_id_lists(tmp_path):
    _kinetics(tmp_path)
    _write(tmp_path / "minikinetics/train_ytid_list.txt", "aaa\nccc\n")
    _write(tmp_path / "minikinetics/val_ytid_list.txt", "eee\n")
    train = read_annotations("minikinetics", tmp_path, train=True)
    assert train.classes == ["abseiling", "zumba"]
    assert [(a.path.name, a.label) for a in train.items] == [("aaa_000010_000020.mp4", 0), ("ccc_000005_000015.mp4", 1)]
    val = read_annotations("minikinetics", tmp_path, train=False)
    assert [(a.path.name, a.label) for a in val.items] == [("eee_000030_000040.mp4", 1)]
    _write(tmp_path / "minikinetics/classes.txt", "zumba\nabseiling\n")  # a user-fixed class order
    assert [a.label for a in read_annotations("minikinetics", tmp_path).items] == [1, 0]


def test_ssv1_semicolon_csvs_and_frame_folders(tmp_path):
    _write(tmp_path / "something-something-v1-labels.csv",
           "Holding something\nPushing something from left to right\nPushing something from right to left\n")
    _write(tmp_path / "something-something-v1-train.csv",
           "100218;Pushing something from right to left\n48032;Holding something\n")
    _write(tmp_path / "something-something-v1-validation.csv", "7;Pushing something from left to right\n")
    frames = tmp_path / "20bn-something-something-v1"
    frames.mkdir()
    train = read_annotations("ssv1", tmp_path, train=True)
    assert len(train.classes) == 3
    assert [(a.path, a.label) for a in train.items] == [(frames / "100218", 2), (frames / "48032", 0)]
    assert [(a.path, a.label) for a in read_annotations("ssv1", tmp_path, train=False).items] == [(frames / "7", 1)]
    _write(tmp_path / "something-something-v1-validation.csv", "7;Pushing [something] left\n")
    with pytest.raises(ValueError, match="id;label"):
        read_annotations("ssv1", tmp_path, train=False)


def test_generic_list_two_and_three_columns(tmp_path):
    _write(tmp_path / "train.txt", "clips/a.mp4 3\nframes/b 40 1\n/abs/c.avi 0\n# comment\n")
    _write(tmp_path / "val.txt", "clips/d.mp4 2\n")
    train = read_annotations("list", tmp_path, train=True)
    assert [(str(a.path), a.label, a.num_frames) for a in train.items] == [
        (str(tmp_path / "clips/a.mp4"), 3, None), (str(tmp_path / "frames/b"), 1, 40), ("/abs/c.avi", 0, None)]
    assert train.classes == ["0", "1", "2", "3"]
    assert [a.label for a in read_annotations("list", tmp_path, train=False).items] == [2]
    one_file = read_annotations("list", tmp_path / "val.txt")  # --root may be the list itself
    assert [a.path.name for a in one_file.items] == ["d.mp4"]
    _write(tmp_path / "classes.txt", "w\nx\ny\nz\n")
    assert read_annotations("list", tmp_path).classes == ["w", "x", "y", "z"]
    _write(tmp_path / "train.txt", "a.mp4 label\n")
    with pytest.raises(ValueError, match="path label"):
        read_annotations("list", tmp_path)


def test_folder_per_class_with_and_without_split_folders(tmp_path):
    flat = tmp_path / "flat"
    _touch(flat / "run/a.mp4")
    _touch(flat / "run/notes.txt")
    (flat / "jump/frames_b").mkdir(parents=True)
    _touch(flat / "jump/c.AVI")
    ann = read_annotations("folder", flat, train=True)
    assert ann.classes == ["jump", "run"]
    assert [(a.path.name, a.label) for a in ann.items] == [("c.AVI", 0), ("frames_b", 0), ("a.mp4", 1)]
    assert read_annotations("folder", flat, train=False).items == ann.items
    split = tmp_path / "split"
    _touch(split / "train/x/1.mp4")
    _touch(split / "val/x/2.mp4")
    _touch(split / "val/y/3.mp4")
    assert [a.path.name for a in read_annotations("folder", split, train=True).items] == ["1.mp4"]
    val = read_annotations("folder", split, train=False)
    assert val.classes == ["x", "y"] and [a.label for a in val.items] == [0, 1]


def test_dataset_table_holds_each_datasets_defaults(tmp_path):
    """One entry per dataset: its reader or generator, default flip and sampling, official splits."""
    assert not DATASETS["ssv1"].flip and all(DATASETS[n].flip for n in ("ucf101", "kinetics", "folder"))
    assert all(e.sampling in ("tsn", "dense") for e in DATASETS.values())
    assert {n for n, e in DATASETS.items() if e.splits} == {"ucf101", "hmdb51"}
    assert {n for n, e in DATASETS.items() if e.generated} == {"synthetic", "random"}
    assert all((e.read is None) != (e.generate is None) for e in DATASETS.values())
    with pytest.raises(ValueError, match="generated"):
        read_annotations("random", tmp_path)


def test_representations_do_not_import_the_data_package():
    """Layers: the data pipeline may use representations' neighbours, never the other way round."""
    from pathlib import Path

    import dynapp.representations as reps

    for path in Path(reps.__file__).parent.glob("*.py"):
        lines = [ln for ln in path.read_text().splitlines() if ln.lstrip().startswith(("import ", "from "))]
        assert not [ln for ln in lines if "dynapp.data" in ln], path.name
