"""read_top_level: the entries of a JSON object read as a stream agree with json.load's,
whatever the read chunk size (chunks of a few characters cut every token somewhere)."""

import json

import pytest

from lt_d2.data import json_stream
from lt_d2.data.json_stream import read_top_level

DOCUMENT = {
    "info": {"note": 'brackets in strings ] } [ { and an escaped quote \\" and , : here'},
    "annotations": [
        {"id": 1, "bbox": [1.5, 2e3, -3, 4], "segmentation": [[1, 2, 3, 4, 5, 6]]},
        {"id": 22, "category_id": 123456789, "text": "caf\u00e9 \u2603 \\u005d"},
        [],
        [[[]]],
        None,
        True,
        -0.125,
        "}",
    ],
    "images": [{"id": k, "coco_url": f"http://x/train2017/{k:012d}.jpg"} for k in range(7)],
    "num_images": 1234567,
    "empty": [],
    "categories": [
        {"id": 2, "name": "b,c", "instance_count": 10, "image_count": 3, "frequency": "r"},
        {"id": 1, "name": "a", "instance_count": 5, "image_count": 5, "frequency": "r"},
    ],
}


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 22])
@pytest.mark.parametrize("indent", [None, 2])
def test_entries_match_json_load_at_any_chunk_size(tmp_path, monkeypatch, chunk, indent):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(DOCUMENT, indent=indent, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(json_stream, "_CHUNK_CHARS", chunk)
    found = read_top_level(
        str(path), decode=("categories", "num_images", "info"), count=("images", "annotations")
    )
    assert found == {
        "categories": DOCUMENT["categories"],
        "num_images": 1234567,
        "info": DOCUMENT["info"],
        "images": 7,
        "annotations": 8,
    }
    assert read_top_level(str(path), decode=("absent",), count=("empty",)) == {"empty": 0}


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"images": [1, 2', "expected one of"),
        ('{"images": [1, 2,]}', "Expecting value"),
        ('{"a": 1} trailing', "text after the top-level object"),
        ("[1, 2]", "expected one of ['{']"),
        ('{"a" 1}', "expected one of [':']"),
        ('{"categories": [{"id": 1', "Expecting"),
        ("", "found 'the end'"),
    ],
)
def test_damaged_files_name_the_file_and_the_problem(tmp_path, monkeypatch, text, problem):
    path = tmp_path / "damaged.json"
    path.write_text(text)
    monkeypatch.setattr(json_stream, "_CHUNK_CHARS", 4)
    with pytest.raises(ValueError, match=r"damaged\.json is not valid JSON") as err:
        read_top_level(str(path), decode=("categories",), count=("images",))
    assert problem in str(err.value)


def test_a_number_cut_by_a_chunk_end_is_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "numbers.json"
    path.write_text('{"num_images":123456789}')
    for chunk in range(1, 30):
        monkeypatch.setattr(json_stream, "_CHUNK_CHARS", chunk)
        assert read_top_level(str(path), decode=("num_images",)) == {"num_images": 123456789}
