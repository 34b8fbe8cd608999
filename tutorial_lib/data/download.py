"""Finding a dataset's files: the one resolver, checked downloads, the embedded manifest.

:func:`locate` turns a dataset name or a path into its registry row and where its data is on this
machine (verifying, downloading or pointing at the manual download's folder); :func:`fetch`
downloads a registered file once (with pooch) into the user cache and refuses a copy whose
checksum does not match; :func:`verify_embedded` checks the data shipped in the project's
``data/`` folder against ``data/MANIFEST.sha256``; :func:`extract_archive` unpacks an archive
without letting a member escape its folder.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

from .._io import file_sha256
from .registry import (REGISTRY, ChecksumError, DataError, DataUnavailableError, DatasetInfo, RemoteFile, cache_dir,
                       embedded_data_dir, registry_entry)


def locate(source: str | Path, folder: str | Path | None = None, *,
           tags: bool = False) -> tuple[DatasetInfo | None, Path]:
    """The dataset resolver: a registry name or a path -> ``(registry row or None, where its data is)``.

    A path (not a registered name) comes back as it is (``folder`` instead, if given). A registered
    name: an embedded set is verified against the manifest (its ``.npz`` file or its folder); a
    downloadable one is fetched with its checksum, unless ``folder`` holds it; a manual download is
    looked for in ``folder`` or ``<cache>/<name>``. ``tags``: the caller reads tag datasets (and
    only those); the row's :class:`~tutorial_lib.data.Layout` says how to read what is returned.
    """
    name = str(source)
    if name not in REGISTRY:
        return None, Path(folder if folder is not None else source).expanduser()
    info = REGISTRY[name]
    if info.layout is None:
        raise DataError(f"{name!r} ({info.task}) has no loader in tutorial_lib: fetch({name!r}) returns its files.")
    if (info.layout.format == "tags") != tags:
        use = "load_dataset" if tags else "load_tag_dataset"
        raise DataError(f"{name!r} is {'not ' * tags}a tagging dataset: use {use}({name!r}).")
    if info.kind == "embedded":
        files = verify_embedded(f"{name}/")
        return info, files[0] if info.layout.format == "npz" else embedded_data_dir() / name
    if info.kind == "download":
        return info, Path(folder).expanduser() / info.files[0].name if folder is not None else fetch(name)[0]
    return info, Path(folder).expanduser() if folder is not None else cache_dir() / name

def _hash_matches(path: Path, known_hash: str) -> bool:
    import pooch

    algorithm, _, expected = known_hash.partition(":")
    return pooch.file_hash(str(path), alg=algorithm).lower() == expected.lower()


def fetch(name: str, *, download: bool = True) -> list[Path]:
    """Return local paths of a registered dataset's files, downloading them with checksums if needed.

    A file already in the cache is used only if its checksum matches. Offline, a
    missing file raises :class:`DataUnavailableError` at once with the file name,
    its URL and where to put it by hand.
    """
    import pooch

    info = registry_entry(name)
    target = cache_dir() / info.name
    if info.kind == "embedded":
        raise DataError(f"{name!r} is embedded in the project: use load_dataset({name!r}).")
    if info.kind == "manual":
        raise DataUnavailableError(
            f"{name!r} cannot be downloaded automatically ({info.licence}).\n"
            + info.instructions())
    paths = []
    _remove_stale_partials(target)
    for remote in info.files:
        local = target / remote.name
        refused = ""
        if local.exists():
            if _hash_matches(local, remote.known_hash):
                paths.append(local)
                continue
            refused = f"{local} does not match its registered checksum {remote.known_hash}"
            if not download:
                raise ChecksumError(f"{refused}; it was not used. Delete it and download it again from {remote.url}")
            warnings.warn(f"{refused} (a damaged or partial copy): removed it and downloading it again.",
                          stacklevel=2)
            local.unlink()
        if not download:
            raise DataUnavailableError(_missing_message(remote, local))
        try:
            # pooch downloads to a temporary file and renames it only once the hash matches
            paths.append(Path(pooch.retrieve(remote.url, known_hash=remote.known_hash, fname=remote.name,
                                              path=target, progressbar=True)))
        except ValueError as err:  # pooch: hash mismatch after download (the bad file is removed)
            raise ChecksumError(f"Download of {remote.url} did not match {remote.known_hash}: {err}") from err
        except Exception as err:  # network errors come in many types (requests, urllib, OSError)
            message = _missing_message(remote, local) + f"\n(download error: {err})"
            if refused:  # the damaged copy is gone, the fresh one did not come
                raise ChecksumError(f"{refused}; it was removed, and downloading it again failed.\n{message}") from err
            raise DataUnavailableError(message) from err
    return paths


def _remove_stale_partials(folder: Path, older_than_s: float = 600.0) -> None:
    """Delete pooch's temporary files (``tmp*``) left by a killed download; a live download keeps its file fresh."""
    import time

    if not folder.is_dir():
        return
    for leftover in folder.glob("tmp*"):
        try:
            if leftover.is_file() and time.time() - leftover.stat().st_mtime > older_than_s:
                leftover.unlink()
        except OSError:
            pass  # another process removed or renamed it first


def _missing_message(remote: RemoteFile, local: Path) -> str:
    return (f"{remote.name} is not on this machine and could not be downloaded.\n"
            f"  URL:  {remote.url}\n"
            f"  Fix:  download it on a machine with internet access and put it at {local}\n"
            f"        (checksum {remote.known_hash}; set TUTORIAL_LIB_CACHE to use another cache folder).")



class UnsafeArchiveError(DataError):
    """An archive member would land outside the destination folder (path traversal) or is a link or device."""


def extract_archive(archive: str | Path, destination: str | Path) -> Path:
    """Extract a ``.zip`` or ``.tar[.gz|.bz2|.xz]`` into ``destination`` safely; return ``destination``.

    Every member is checked first: an absolute path, a ``..`` that climbs out of
    ``destination``, a link or a device file refuses the whole archive with
    :class:`UnsafeArchiveError` naming the member, and nothing is written. Use it
    instead of ``unzip`` on archives downloaded from the web (e.g. Kaggle's).
    """
    import tarfile

    archive, destination = Path(archive), Path(destination)
    root = destination.resolve()

    def check(name: str) -> None:
        target = (root / name).resolve()
        if Path(name).is_absolute() or name.startswith(("/", "\\")) or not target.is_relative_to(root):
            raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside {destination} "
                                     "(path traversal); nothing was extracted. Do not use this archive.")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                check(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symbolic link stored in the zip
                    raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; "
                                             "nothing was extracted.")
            destination.mkdir(parents=True, exist_ok=True)
            zf.extractall(destination)
        return destination
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{archive} is neither a zip nor a tar archive ({err}); download it again.") from err
    with tf:
        for member in tf.getmembers():
            check(member.name)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link or special file; "
                                         "nothing was extracted.")
        destination.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the standard library's own guard as well
            tf.extractall(destination, filter="data")
        else:
            tf.extractall(destination)  # every member was checked above
    return destination


# --------------------------------------------------------------------------- manifest checks


def _read_manifest(data_dir: Path) -> dict[str, str]:
    manifest = data_dir / "MANIFEST.sha256"
    if not manifest.exists():
        raise DataUnavailableError(f"{manifest} is missing; the embedded data cannot be verified. "
                                   "Restore it with `git checkout -- data/`.")
    entries = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            entries[rel.strip()] = digest
    return entries


def verify_embedded(prefix: str, data_dir: Path | None = None) -> list[Path]:
    """Check every manifest entry under ``prefix`` (e.g. ``"clothing/"``); return the verified files.

    Missing or altered files are refused with a :class:`ChecksumError` that lists them.
    """
    data_dir = data_dir or embedded_data_dir()
    entries = {rel: d for rel, d in _read_manifest(data_dir).items() if rel.startswith(prefix)}
    if not entries:
        raise DataUnavailableError(f"No files under {prefix!r} in {data_dir / 'MANIFEST.sha256'}.")
    bad, good = [], []
    for rel, expected in sorted(entries.items()):
        path = data_dir / rel
        if not path.exists():
            bad.append(f"{rel} (missing)")
            continue
        if file_sha256(path) != expected:
            bad.append(f"{rel} (checksum mismatch)")
        else:
            good.append(path)
    if bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ChecksumError(f"{len(bad)} embedded file(s) failed verification and were refused:\n  {shown}\n"
                            "Fix: restore them with `git checkout -- data/` (or re-clone the project).")
    return good

