"""What a public dataset's files must be: the shipped sha256 manifests (``<folder>.sha256``, one
``<sha256>  <relative path>`` line per file) and the check of a dataset folder against one.

A manifest covers the top-level entries its paths name (its *scope*: ``Actor_01`` .. ``Actor_24``
for RAVDESS; ``data.csv`` and ``emotifymusic/`` for Emotify); inside them every file must be
listed, present and unaltered. Files outside the scope (a repository's own README) are not
checked, and operating-system litter (``.DS_Store``, ``__MACOSX``, ``._*``) is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from audioml.files import file_digest

__all__ = ["ManifestReport", "read_manifest", "shipped_manifest", "manifest_root", "verify_tree"]

_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
_IGNORED = (".DS_Store", "__MACOSX", "Thumbs.db")


@dataclass(frozen=True)
class ManifestReport:
    """The outcome of ``verify_tree``: paths (relative, POSIX) missing, not listed, or with other
    content; ``checked`` files matched; ``absent`` listed files not present in a partial copy
    (``present_only``: counted, not refused)."""

    root: Path
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    altered: tuple[str, ...]
    checked: int
    absent: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.altered)

    def summary(self, shown: int = 10) -> str:
        """One line per kind of problem, naming the first ``shown`` files of each."""
        lines = []
        for kind, paths in (("altered", self.altered), ("missing", self.missing), ("not in the manifest", self.extra)):
            if paths:
                more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
                lines.append(f"{len(paths)} {kind}: {', '.join(paths[:shown])}{more}")
        if lines:
            return "; ".join(lines)
        return f"all {self.checked} files match" + (f" ({self.absent} listed files not present)" if self.absent else "")


def read_manifest(path: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of a ``sha256sum`` file. Raises ``ValueError`` for a line that
    is not ``<64 hex>  <path>`` or a path that is absolute or climbs out (``..``)."""
    entries: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        relative = PurePosixPath(match.group(2)) if match else None
        if relative is None or relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{path}:{number}: not a manifest line (<sha256>  <relative path>): {line[:120]!r}")
        entries[str(relative)] = match.group(1)
    if not entries:
        raise ValueError(f"{path}: an empty manifest")
    return entries


def shipped_manifest(folder: str) -> Path:
    """The manifest audioml ships for the dataset folder ``folder`` (``donateacry-corpus``,
    ``ravdess``, ``emotify``). Raises ``KeyError`` for another name."""
    path = Path(str(resources.files(__name__) / f"{folder}.sha256"))
    if not path.is_file():
        raise KeyError(f"no manifest for {folder!r}")
    return path


def manifest_root(folder: Path, manifest: dict[str, str]) -> Path:
    """The folder holding the manifest's scope: ``folder`` itself, or the one sub-folder that
    does (RAVDESS repackaged as ``audio_speech_actors_01-24/Actor_XX``); ``folder`` when neither."""
    scope = _scope(manifest)
    if any((folder / name).exists() for name in scope):
        return folder
    inside = [p for p in sorted(folder.iterdir()) if p.is_dir() and any((p / name).exists() for name in scope)] \
        if folder.is_dir() else []
    return inside[0] if len(inside) == 1 else folder


def _scope(manifest: dict[str, str]) -> set[str]:
    return {path.split("/", 1)[0] for path in manifest}


def _ignored(relative: PurePosixPath) -> bool:
    return any(part in _IGNORED or part.startswith("._") for part in relative.parts)


def verify_tree(folder: str | Path, manifest: dict[str, str], present_only: bool = False) -> ManifestReport:
    """Check the files under ``folder`` (``manifest_root``) against ``manifest``: within its
    scope every file listed, present and with the listed sha256; links count as files not in the
    manifest. ``present_only``: a partial copy (a sample, an interrupted transfer) is checked for
    altered and unlisted files only, its missing files counted but not refused."""
    root = manifest_root(Path(folder), manifest)
    found: dict[str, Path] = {}
    extra: list[str] = []
    for name in sorted(_scope(manifest)):
        top = root / name
        candidates = [top] if (top.is_file() or top.is_symlink()) else sorted(top.rglob("*")) if top.is_dir() else []
        for path in candidates:
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if _ignored(relative) or (path.is_dir() and not path.is_symlink()):
                continue
            if path.is_symlink() or str(relative) not in manifest:
                extra.append(str(relative))
            else:
                found[str(relative)] = path
    altered = [relative for relative, path in found.items() if file_digest(path) != manifest[relative]]
    absent = sorted(set(manifest) - set(found))
    return ManifestReport(root, () if present_only else tuple(absent), tuple(sorted(extra)), tuple(sorted(altered)),
                          len(found) - len(altered), len(absent) if present_only else 0)
