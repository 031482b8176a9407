"""Files that a user or a run folder names, read without trusting them.

``open_regular``: a file (a run's metrics log, read line by line) is opened only when it is a
regular file: a FIFO would block forever, a link to /dev/zero would never end. ``read_text``: a
text (a run's config, a charlm text) read whole that way, when it is no larger than a limit.
``read_header``: a .npz member's .npy header is read before its data, so that what it claims
(dtype, shape, and so how many bytes) is checked against the member's size, and against the memory
here, before anything that size is allocated (gpurnn.checkpoint and gpurnn.datafiles read their
archives through it). ``write_whole``: a file written whole or not at all (a temporary file beside
it, renamed over it).
"""

import io
import math
import os
import stat

import numpy as np

HEADER_LIMIT = 1 << 16      # bytes: numpy writes headers of a few hundred


class Header:
    """What a member's .npy header claims: ``dtype``, ``shape``, ``fortran`` (its order), ``offset``
    (where its data starts in the member), and the ``size`` in bytes that the member must then have."""

    def __init__(self, dtype, shape, fortran, offset):
        self.dtype, self.shape, self.fortran, self.offset = dtype, tuple(shape), fortran, offset
        self.nbytes = math.prod(self.shape) * dtype.itemsize
        self.size = offset + self.nbytes

    def describe(self):
        return f"shape {self.shape} {self.dtype}"


def read_header(zf, info):
    """The Header of the member ``info`` of the open ZipFile ``zf``, read without its data; a
    ValueError saying what is wrong with it."""
    with zf.open(info) as f:
        head = io.BytesIO(f.read(min(info.file_size, HEADER_LIMIT)))
    try:
        version = np.lib.format.read_magic(head)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = read(head)
    except (ValueError, TypeError, SyntaxError, EOFError) as e:
        raise ValueError(f"its header cannot be read ({e})") from None
    return Header(dtype, shape, fortran, head.tell())


def open_regular(path, what):
    """The regular file ``path`` opened for reading bytes; ``what`` names it in errors ("the
    metrics log").

    Only a regular file is opened: a FIFO would block forever, a device such as /dev/zero would
    never end, a folder has no text. Its kind is checked before opening (so that no device is
    opened) and again on the open file (the path may have been replaced in between), which is
    opened non-blocking, so that not even a FIFO put there can block the open. Raises OSError when
    the file cannot be opened (missing, no permission), ValueError naming ``path`` when it is not a
    regular file."""
    def refuse_unless_regular(mode):
        if not stat.S_ISREG(mode):
            kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                     (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                     (stat.S_ISSOCK, "a socket"))
            kind = next((name for test, name in kinds if test(mode)), "not a regular file")
            raise ValueError(f"{what} {path} is {kind}, not a file; only a regular file is read")

    refuse_unless_regular(os.stat(path).st_mode)      # follows links: a link to /dev/zero is the device
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    f = open(os.open(path, flags), "rb")
    try:
        refuse_unless_regular(os.fstat(f.fileno()).st_mode)
    except BaseException:
        f.close()
        raise
    return f


def read_text(path, limit, what):
    """The text of the regular file ``path`` (``open_regular``), decoded as UTF-8, read only when it
    is at most ``limit`` bytes; ``what`` names the file in errors ("the run config"). Raises
    OSError when it cannot be opened or read, ValueError naming ``path`` when it is not a regular
    file, is larger than ``limit`` or is not UTF-8."""
    def refuse_over(size):
        if size > limit:
            raise ValueError(f"{what} {path} is larger than {limit:,} bytes, the most that is read of it; "
                             f"it was not read")

    with open_regular(path, what) as f:
        refuse_over(os.fstat(f.fileno()).st_size)
        data = f.read(limit + 1)
    refuse_over(len(data))                            # it grew after fstat
    return utf8(data, path, what)


def utf8(data, path, what, first_line=1):
    """``data`` (bytes read from line ``first_line`` of ``path`` on) decoded as UTF-8; a ValueError
    naming the line otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise ValueError(f"{what} {path} is not UTF-8 text: line {line} holds bytes that are not UTF-8 "
                         f"({e.reason} at byte {e.start})") from None


def write_whole(path, write):
    """``write(f)`` (``f`` open for writing bytes) into a temporary file beside ``path``, then
    renamed over it: a failed write (a full or read-only disk, an error in ``write``) leaves no
    half-written file, and an OSError names ``path``."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, f"cannot be written ({e.strerror or e})", path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
