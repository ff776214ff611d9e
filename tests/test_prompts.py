"""Prompt sets from files and URLs (``file://`` stands in for the public URLs: no network here)."""

from __future__ import annotations

import json
import zipfile

import pytest

from cachediff.prompts import BUILTIN, COCO_MEMBER, load_prompts

COCO = {
    "images": [{"id": 7}, {"id": 3}],
    "annotations": [
        {"image_id": 7, "id": 11, "caption": "A dog on a couch. "},
        {"image_id": 3, "id": 40, "caption": "second caption of image 3"},
        {"image_id": 3, "id": 12, "caption": "A train at a station."},
    ],
}


def test_builtin_and_limit():
    assert load_prompts() == BUILTIN
    assert load_prompts("builtin", limit=3) == BUILTIN[:3]
    with pytest.raises(ValueError, match="limit"):
        load_prompts("builtin", limit=0)


def test_coco_json_first_caption_per_image_in_id_order(tmp_path):
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps(COCO))
    assert load_prompts(str(path)) == ["A train at a station.", "A dog on a couch."]


def test_coco_annotations_zip_from_a_url_is_cached(tmp_path, monkeypatch):
    archive = tmp_path / "annotations_trainval2017.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(COCO_MEMBER, json.dumps(COCO))
    monkeypatch.setenv("CACHEDIFF_CACHE", str(tmp_path / "cache"))
    assert load_prompts(archive.as_uri(), limit=1) == ["A train at a station."]
    archive.unlink()  # the second read comes from the cache
    assert load_prompts(archive.as_uri()) == ["A train at a station.", "A dog on a couch."]
    assert (tmp_path / "cache" / "prompts" / archive.name).exists()


def test_parti_tsv_and_text_files(tmp_path):
    tsv = tmp_path / "PartiPrompts.tsv"
    tsv.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\na cow\tAnimals\tBasic\t\n")
    assert load_prompts(str(tsv)) == ["bond", "a cow"]
    txt = tmp_path / "mine.txt"
    txt.write_text("first prompt\n\n second prompt \n")
    assert load_prompts(str(txt)) == ["first prompt", "second prompt"]


def test_missing_file_unreachable_url_and_empty_file_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.txt"))
    monkeypatch.setenv("CACHEDIFF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="could not download"):
        load_prompts((tmp_path / "absent.tsv").as_uri())
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(str(tmp_path / "empty.txt"))
