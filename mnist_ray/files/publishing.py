"""Folders published complete or absent: a reader never sees half of a report, prediction or export.

Locally a folder is assembled beside its destination and renamed into place. On an object store there is no
rename: the files are uploaded, then ``MANIFEST.json`` last, and a folder counts as complete only once its
manifest exists and every file it lists is there with its size (:func:`is_complete`).
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.fs as pafs

from mnist_ray.files import storage
from mnist_ray.files.atomic import atomic_dir, swap_in

MANIFEST = "MANIFEST.json"
"""Written last into a published folder: its presence (with matching sizes) means the folder is complete."""


def _tree(local_dir: Path) -> dict[str, int]:
    """Every file under ``local_dir`` as {relative posix path: size}."""
    return {p.relative_to(local_dir).as_posix(): p.stat().st_size for p in sorted(local_dir.rglob("*")) if p.is_file()}


def _manifest(files: dict[str, int]) -> str:
    """The manifest text for ``files``."""
    return json.dumps({"files": files, "written_at": datetime.now(timezone.utc).isoformat()}, indent=2) + "\n"


def publish_dir(local_dir: Path, dest: str, overwrite: bool = False) -> str:
    """Make the folder ``dest`` hold exactly the files of ``local_dir``, visible as complete only when it is."""
    dest, local_dir = storage.normalize(dest), Path(local_dir)
    files = _tree(local_dir)
    if MANIFEST in files:
        raise storage.StorageError(f"{local_dir}: contains {MANIFEST}, a name reserved for the published manifest")
    if not overwrite and (is_complete(dest) or (not storage.is_uri(dest) and Path(dest).exists())):
        raise storage.StorageError(f"{dest} exists: pass --overwrite or another --run-id")
    if not storage.is_uri(dest):
        with storage.errors(dest, sum(files.values())), atomic_dir(dest, overwrite=overwrite) as tmp:  # old or new
            shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
            os.chmod(tmp, 0o755)  # copytree copied the 0700 of a TemporaryDirectory; reports are meant to be shared
            (tmp / MANIFEST).write_text(_manifest(files))
        return dest
    remove_dir(dest)  # an overwritten or half-written folder: its manifest goes first
    with storage.errors(dest, sum(files.values())):
        for rel in files:
            storage.upload_file(local_dir / rel, storage.join(dest, rel))
        storage.write_text(storage.join(dest, MANIFEST), _manifest(files))
    return dest


def publish_staged(staging: str, dest: str, overwrite: bool = False) -> str:
    """Publish the folder a Ray Data write filled at ``staging`` (beside ``dest``) as ``dest``, complete or absent.

    Locally the staging folder gets its manifest and is renamed into place. On an object store its files are
    copied in the store (no download) and the manifest is written last. The staging folder is gone afterwards.
    """
    dest = storage.normalize(dest)
    fs, root = storage.filesystem(staging)
    with storage.errors(staging):
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = {i.path[len(root) :].lstrip("/"): i.size for i in infos if i.type == pafs.FileType.File}
    if not overwrite and (is_complete(dest) or (not storage.is_uri(dest) and Path(dest).exists())):
        raise storage.StorageError(f"{dest} exists: pass --overwrite or another --output")
    if not storage.is_uri(dest):
        with storage.errors(dest):
            (Path(staging) / MANIFEST).write_text(_manifest(files))
            os.chmod(staging, 0o755)
            swap_in(Path(staging), Path(dest), overwrite)
        return dest
    remove_dir(dest)  # an overwritten or half-written folder: its manifest goes first
    _, dest_root = storage.filesystem(dest)
    with storage.errors(dest, sum(files.values())):
        for rel in files:
            fs.copy_file(f"{root}/{rel}", f"{dest_root}/{rel}")
        storage.write_text(storage.join(dest, MANIFEST), _manifest(files))
    remove_dir(staging)
    return dest


def remove_dir(path: str) -> None:
    """Delete the folder ``path`` and everything under it, its manifest first so readers stop trusting it."""
    fs, fs_path = storage.filesystem(path)
    with storage.errors(path):
        if fs.get_file_info(fs_path).type != pafs.FileType.Directory:
            return
        if fs.get_file_info(f"{fs_path}/{MANIFEST}").type == pafs.FileType.File:
            fs.delete_file(f"{fs_path}/{MANIFEST}")
        fs.delete_dir_contents(fs_path, missing_dir_ok=True)
        if not storage.is_uri(path) or "/" in fs_path:
            fs.delete_dir(fs_path)  # but never a bucket


def is_complete(dest: str) -> bool:
    """True if ``dest`` has a manifest and every file it lists is present with its size."""
    fs, fs_path = storage.filesystem(dest)
    try:
        listed = json.loads(storage.read_text(storage.join(storage.normalize(dest), MANIFEST)))["files"]
    except (storage.StorageError, ValueError, KeyError, TypeError):
        return False
    with storage.errors(dest):
        infos = fs.get_file_info(pafs.FileSelector(fs_path, recursive=True, allow_not_found=True))
    sizes = {i.path[len(fs_path) :].lstrip("/"): i.size for i in infos if i.type == pafs.FileType.File}
    return all(sizes.get(rel) == size for rel, size in listed.items())


def check_new_folder(path: str, overwrite: bool) -> str:
    """``path`` normalised, for a job's output folder: an existing one is refused unless ``overwrite``."""
    target = storage.normalize(path)
    if not overwrite and storage.exists(target):
        raise storage.StorageError(f"output {target} already exists: pass --overwrite or another --output")
    return target
