"""Input files: regular files only, named in errors safely (no torch).

A FIFO or a device (/dev/zero) given as a model, batch, config or baseline would hang the run or fill
memory; a name too long for the file system, a symbolic-link loop or a name that is not UTF-8 must give
exit 2 with the name, not a traceback.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from gradcheck_cli.errors import InputError

# Configs and baselines are read whole into memory: a few MiB is far beyond any real one.
MAX_CONFIG_BYTES = 1 << 20
MAX_BASELINE_BYTES = 16 << 20


def shown(path: object, limit: int | None = None) -> str:
    """A path as it can be printed: control characters and undecodable bytes as \\xNN; with `limit`, a
    longer one is cut in the middle."""
    from gradcheck_cli.report.escape import terminal

    text = terminal(os.fspath(path) if isinstance(path, os.PathLike) else path)
    return text if limit is None or len(text) <= limit else text[:limit // 2] + "…" + text[-(limit // 2):]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def input_file(path: Path | str, what: str, *, max_bytes: int | None = None, flag: str | None = None,
               not_found_hint: str | None = None) -> Path:
    """`path` if it is a regular file that can be read (symbolic links followed); InputError otherwise.
    Messages: '{what} file not found: PATH', '... symbolic link loop', '... name too long', '... is a FIFO'."""
    p = Path(path)
    name = shown(p)
    where = f" (check the {flag} path)" if flag else ""
    try:
        st = os.stat(p)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{what} file not found: {name}",
                             hint=not_found_hint or (f"check the {flag} path" if flag else None)) from None
        if exc.errno == errno.ELOOP:
            raise InputError(f"{what} file {name}: symbolic link loop (a link that points back to itself)",
                             hint="fix or remove the link") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(f"{what} file name too long for the file system ({len(os.fspath(p))} characters): "
                             f"{shown(p, 120)}", hint="use a shorter path") from None
        if exc.errno == errno.EACCES:
            raise InputError(f"cannot read {what} file {name}: permission denied") from None
        raise InputError(f"cannot read {what} file {name}: {exc.strerror or exc}{where}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} file {name} is {_kind(st.st_mode)}, not a regular file",
                         hint="give a regular file" + (f" to {flag}" if flag else "")) from None
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputError(f"{what} file {name} is too large ({st.st_size:,} bytes; at most {max_bytes:,})",
                         hint=f"is this really a {what} file?")
    return p


def read_text(path: Path, what: str, max_bytes: int) -> str:
    """The whole file as UTF-8, at most `max_bytes` (checked again while reading: a file can grow)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} file {shown(path)}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InputError(f"{what} file {shown(path)} is too large (more than {max_bytes:,} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read {what} file {shown(path)}: not UTF-8 text (byte {exc.start})") from None
