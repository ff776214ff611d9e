"""Files: atomic writes (a result file is either complete or absent, never half-written) of images,
GIFs, JSON, CSV and arrays; the environment record saved next to outputs; and the check that
weights to load exist locally or name a hub repository.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text(), sorted(p.name for p in out.parent.iterdir())
    ('done', ['r.txt'])
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import diffusers
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (hidden, so no pattern of result files matches it; same
    suffix, so writers pick the same format); rename it onto ``path`` when the block succeeds, delete
    it when the block fails. A process killed inside the block leaves it behind:
    ``remove_stale_temporaries`` clears those."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")  # one per process
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: Temporary files of ``atomic_path`` (and of releases before it hid them: ``name.tmp<pid>.suffix``).
_TEMPORARY = re.compile(r"\.tmp(\d+)\.[^.]+$")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file of ``atomic_path``.

    Example:
        >>> is_temporary(Path(".stats_000000.json.tmp42.json")), is_temporary(Path("stats_000000.tmp7.json"))
        (True, True)
        >>> is_temporary(Path("stats_000000.json"))
        False
    """
    return _TEMPORARY.search(Path(path).name) is not None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files under ``folder`` whose writing process is gone (killed inside an
    ``atomic_path`` block); return them."""
    stale = []
    for path in Path(folder).rglob("*.tmp*"):
        match = _TEMPORARY.search(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def claim(path: Path) -> bool:
    """Claim the work whose result ``path`` will hold, for this process: True if the work is ours (no
    claim, one of ours, or one whose process on this machine is gone), False while another live
    process holds it. The claim is a hidden ``.<name>.claim`` file beside ``path`` holding the host
    and the process id, read and written under a lock of the folder; ``release`` removes it. Two
    sweeps on one folder so share its shards instead of both doing all of them.

    Example:
        >>> import tempfile
        >>> shard = Path(tempfile.mkdtemp()) / "samples_000000.npy"
        >>> claim(shard), claim(shard), sorted(p.name for p in shard.parent.iterdir())
        (True, True, ['.claims.lock', '.samples_000000.npy.claim'])
        >>> release(shard); sorted(p.name for p in shard.parent.iterdir())
        ['.claims.lock']
    """
    marker, me = _claim_marker(path), [platform.node(), str(os.getpid())]
    with open(marker.parent / ".claims.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        owner = marker.read_text().split() if marker.exists() else []
        held = len(owner) == 2 and owner != me and (owner[0] != me[0] or _alive(int(owner[1])))
        if not held:
            marker.write_text(" ".join(me))
        return not held


def release(path: Path) -> None:
    """Remove this process's claim on ``path`` (``claim``)."""
    _claim_marker(path).unlink(missing_ok=True)


def _claim_marker(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.claim")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def output_folder(path: Path) -> Path:
    """Create the output folder ``path`` (and its parents) before any work, or raise a one-line
    ``ValueError`` saying why it cannot be one.

    Example:
        >>> output_folder(Path("/dev/null/x"))
        Traceback (most recent call last):
        ...
        ValueError: cannot use '/dev/null/x' as the output folder: a parent is a file
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot use {str(path)!r} as the output folder: it is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise ValueError(f"cannot use {str(path)!r} as the output folder: a parent is a file") from None
    except OSError as err:
        raise ValueError(f"cannot use {str(path)!r} as the output folder: {err.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"cannot use {str(path)!r} as the output folder: not writable")
    return path


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


# ----------------------------------------------------------------------------- images
def grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """Tile ``(B, C, H, W)`` images in [-1, 1] into one uint8 ``(H', W', C)`` array, ``rows`` rows.

    Example:
        >>> grid(torch.zeros(6, 3, 4, 4), rows=2).shape
        (14, 20, 3)
    """
    b, c, h, w = images.shape
    cols = -(-b // rows)
    canvas = torch.full((c, rows * (h + 2) + 2, cols * (w + 2) + 2), -1.0)
    for k in range(b):
        r, q = divmod(k, cols)
        canvas[:, 2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = images[k]
    return ((canvas.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def side_by_side(left: torch.Tensor, right: torch.Tensor, rows: int, gap: int = 8) -> np.ndarray:
    """Two grids next to each other (left: baseline, right: DeepCache)."""
    a, b = grid(left, rows), grid(right, rows)
    spacer = np.full((a.shape[0], gap, a.shape[2]), 255, dtype=np.uint8)
    return np.concatenate([a, spacer, b], axis=1)


def labelled_grid(
    rows: dict[str, torch.Tensor], columns: list[str], tile: int = 128, font_size: int = 13
) -> np.ndarray:
    """Rows of images ``(B, C, H, W)`` in [-1, 1], each enlarged (nearest neighbour) to at least
    ``tile`` pixels, with the row names (which may hold line breaks) on the left and the column
    labels (wrapped) above.

    Example:
        >>> a = labelled_grid({"baseline": torch.zeros(2, 1, 8, 8), "DeepCache": torch.ones(2, 1, 8, 8)},
        ...                   ["a photo of a bag", "a photo of a coat"], tile=32)
        >>> a.shape[2], a.shape[0] > 2 * 32, a.shape[1] > 2 * 32
        (3, True, True)
    """
    first = next(iter(rows.values()))
    scale = max(1, -(-tile // first.shape[-1]))
    h, w = first.shape[-2] * scale, first.shape[-1] * scale
    font = ImageFont.load_default(size=font_size)
    chars = max(4, int(w / (0.55 * font_size)))
    wrapped = ["\n".join(_wrap(label, chars)) for label in columns]
    lines = max(label.count("\n") + 1 for label in wrapped)
    left = max(int(font.getlength(line)) for name in rows for line in name.splitlines()) + 12
    top, gap = lines * (font_size + 3) + 8, 4
    canvas = Image.new("RGB", (left + len(columns) * (w + gap), top + len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for q, label in enumerate(wrapped):
        draw.multiline_text((left + q * (w + gap), 4), label, fill="black", font=font, spacing=3)
    for r, (name, images) in enumerate(rows.items()):
        y = top + r * (h + gap)
        draw.multiline_text((4, y + h // 2), name, fill="black", font=font, anchor="lm", spacing=3)
        for q in range(len(columns)):
            tile = grid(images[q : q + 1], rows=1)[2:-2, 2:-2]  # (H, W, C)
            tile_image = Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile)
            canvas.paste(tile_image.convert("RGB").resize((w, h), Image.NEAREST), (left + q * (w + gap), y))
    return np.asarray(canvas)


def _wrap(text: str, width: int) -> list[str]:
    """Words of ``text`` in lines of at most ``width`` characters (longer words alone on a line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (its format from the suffix); return the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)


def save_png(path: Path, array: np.ndarray) -> None:
    """Save a uint8 image array as PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(tmp)


def save_gif(path: Path, frames: torch.Tensor, fps: int = 7) -> None:
    """Save video frames ``(F, C, H, W)`` in [-1, 1] as an animated GIF atomically."""
    arrays = ((frames.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arrays]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0
        )


def save_npy(path: Path, array: np.ndarray) -> None:
    """Save an array as .npy atomically."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)


# ----------------------------------------------------------------------------- records
def environment() -> dict:
    """Library versions and machine facts to save next to every output."""
    return dict(
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        cpu_threads=torch.get_num_threads(),
        cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    )


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def read_json(path: Path) -> dict:
    """A JSON file written by ``write_json`` (or another record of a run), or a one-line
    ``ValueError`` naming it if it does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to make it again") from err


def write_csv(rows: list[dict], path: Path) -> None:
    """Write rows as CSV atomically."""
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def read_csv(path: Path) -> list[dict]:
    """Rows of an existing CSV, or none."""
    return pd.read_csv(path).to_dict("records") if path.exists() else []


def update_csv(path: Path, row: dict, key: str = "setting") -> None:
    """Replace the row with ``row[key]`` in the CSV, or append it, under a file lock: sweeps that run
    side by side on one CSV (say, with different ``--only`` patterns) keep each other's rows.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "r.csv"
        >>> update_csv(path, dict(setting="a", fid=2.0)); update_csv(path, dict(setting="b", fid=3.0))
        >>> update_csv(path, dict(setting="a", fid=1.0)); read_csv(path)
        [{'setting': 'a', 'fid': 1.0}, {'setting': 'b', 'fid': 3.0}]
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        rows = {r[key]: r for r in read_csv(path)}
        rows[row[key]] = {**rows.get(row[key], {}), **row}
        write_csv(list(rows.values()), path)
