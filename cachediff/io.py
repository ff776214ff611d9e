"""File helpers: atomic writes (a result file is either complete or absent, never half-written) and
the check that weights to load exist locally or name a hub repository.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text(), sorted(p.name for p in out.parent.iterdir())
    ('done', ['r.txt'])
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers pick the same format); rename
    it onto ``path`` when the block succeeds, delete it when the block fails."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")  # one per process
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def require_weights(path: str, what: str = "model") -> None:
    """Raise ``FileNotFoundError`` unless ``path`` is an existing folder or looks like a hub id
    ('owner/name' with no path syntax: no leading '/', '.', '~' and no second '/').

    Example:
        >>> require_weights("runwayml/stable-diffusion-v1-5")
        >>> require_weights("/no/such/folder", "CLIP")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no CLIP folder '/no/such/folder' (give a local directory or a hub id 'owner/name')
    """
    hub_id = path.count("/") == 1 and not path.startswith(("/", ".", "~"))
    if not Path(path).exists() and not hub_id:
        raise FileNotFoundError(
            f"no {what} folder {path!r} (give a local directory or a hub id 'owner/name')"
        )
