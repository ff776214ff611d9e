"""Prompt sets for text-conditioned evaluation: MS-COCO 2017 val captions, PartiPrompts, or a file.

A source is a name, a local path or a URL:

* ``builtin``: a small fixed list, for tests and smoke runs;
* ``fashion``: "a photo of a {name}" for the ten Fashion-MNIST classes, in label order (the prompts
  of the tiny Stable Diffusion trained here, which its class score checks);
* ``coco``: MS-COCO 2017 val captions, the first caption of each image in image-id order (5,000
  prompts, the paper's CLIP-score set), from ``captions_val2017.json`` or the official annotations zip;
* ``parti``: PartiPrompts (1,632 prompts), the ``Prompt`` column of ``PartiPrompts.tsv``;
* any ``.json`` (COCO format), ``.tsv`` (a ``Prompt`` column), ``.zip`` (holding the COCO captions)
  or ``.txt`` (one prompt per line), as a local path or an ``http(s)://`` or ``file://`` URL.

Downloads are cached under ``~/.cache/cachediff/prompts`` (``CACHEDIFF_CACHE`` overrides it).

Example:
    >>> load_prompts("builtin", limit=2)
    ['a photograph of an astronaut riding a horse', 'a red fox sitting in fresh snow, golden hour']
    >>> load_prompts("fashion")[-1]
    'a photo of a ankle boot'
    >>> load_prompts("nowhere.txt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: prompt file 'nowhere.txt' does not exist; give a path, a URL, or one of: ...
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.request
import zipfile
from pathlib import Path

from .datasets import FASHION_CLASSES
from .files import atomic_path

#: Where the public prompt sets live (downloaded once on a user's machine, then read from the cache).
URLS = {
    "coco": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    "parti": "https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv",
}
COCO_MEMBER = "annotations/captions_val2017.json"

BUILTIN = [
    "a photograph of an astronaut riding a horse",
    "a red fox sitting in fresh snow, golden hour",
    "a bowl of ramen on a wooden table, studio lighting",
    "an oil painting of a lighthouse in a storm",
    "a cat wearing a tiny knitted hat",
    "a futuristic city skyline at night, neon reflections on wet streets",
    "a watercolor of cherry blossoms by a river",
    "a close-up of a hummingbird drinking from a flower",
]

#: Prompt sets that ship with the library: name -> prompts
NAMED = {
    "builtin": BUILTIN,
    "fashion": [f"a photo of a {name}" for name in FASHION_CLASSES],
}


def load_prompts(source: str = "builtin", limit: int | None = None) -> list[str]:
    """The prompts of ``source`` (see the module docstring), the first ``limit`` of them if given."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if source in NAMED:
        prompts = list(NAMED[source])
    else:
        prompts = _parse(_fetch(URLS.get(source, source)))
    if not prompts:
        raise ValueError(f"no prompts found in {source!r}")
    return prompts[:limit]


def _fetch(location: str) -> Path:
    """A local file for ``location``: the path itself, or a cached download of the URL."""
    if "://" not in location:
        path = Path(location).expanduser()
        if not path.is_file():
            names = ", ".join([*NAMED, *URLS])
            raise FileNotFoundError(
                f"prompt file {location!r} does not exist; give a path, a URL, or one of: {names}"
            )
        return path
    cache = Path(os.environ.get("CACHEDIFF_CACHE", Path.home() / ".cache" / "cachediff")) / "prompts"
    path = cache / location.rstrip("/").rsplit("/", 1)[-1]
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(location, timeout=60) as response, atomic_path(path) as tmp:
                tmp.write_bytes(response.read())
        except OSError as err:
            raise FileNotFoundError(
                f"could not download {location}: {err}; download it yourself and pass the local path"
            ) from err
    return path


def _parse(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            return coco_captions(json.loads(archive.read(COCO_MEMBER)))
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        return coco_captions(json.loads(text))
    if suffix == ".tsv":
        return [row["Prompt"].strip() for row in csv.DictReader(io.StringIO(text), delimiter="\t")]
    return [line.strip() for line in text.splitlines() if line.strip()]


def coco_captions(annotations: dict) -> list[str]:
    """The first caption of each image, in image-id order (one prompt per image).

    Example:
        >>> coco_captions({"annotations": [{"image_id": 2, "id": 5, "caption": "B"},
        ...     {"image_id": 1, "id": 9, "caption": "A2 "}, {"image_id": 1, "id": 3, "caption": "A1"}]})
        ['A1', 'B']
    """
    first: dict[int, tuple[int, str]] = {}
    for a in annotations["annotations"]:
        if a["image_id"] not in first or a["id"] < first[a["image_id"]][0]:
            first[a["image_id"]] = (a["id"], a["caption"].strip())
    return [first[k][1] for k in sorted(first)]
