"""Who else can change a path: nstrace's own directories, and the files it writes for the caller.

nstrace runs as root, and a path another user can change is a path that user
can redirect: a symlink planted where root is about to write turns the write
against any file on the system. Two rules, one walker:

- **Directories nstrace keeps things in** (/run/nstrace, /var/cache/nstrace,
  :func:`trusted_dir`): every directory on the way is root's or the caller's,
  and no group or other user can write it (a sticky one, like /tmp, only
  when the next entry is root's or the caller's: sticky keeps others from
  renaming it); every symlink on the way is root's or the caller's; the
  directory itself is no symlink, is root's or the caller's, and has mode
  0755 or stricter. Files in it pass the same owner and mode test
  (:func:`check_file`) and are written whole (:func:`write_whole`).
  Anything else is refused with :class:`UnsafePath`, never repaired: a
  directory others could write may already hold what they planted.
- **Files written where the caller asks** (``--record``, ``render -o``, ``demo
  --picture``, :func:`create_output`): in a directory another user can write
  (group or world writable, sticky, or owned by someone other than root and
  the caller), a symlink the caller does not own is never followed, and an
  existing file is written only if it is the caller's and has no other hard
  link. What is written is a regular file, a terminal or /dev/null (or,
  through /dev/stdout and its kin, the descriptor nstrace was given), never a
  FIFO, socket or other device (a FIFO blocks the opener until someone reads,
  and that someone gets the file). The path is resolved one component at a
  time from a directory fd (openat with O_NOFOLLOW), so nothing can be
  swapped between the look and the use. Files a lab guest names
  (:func:`open_beneath`) follow no symlink at all below the caller's directory.

The kernel's fs.protected_symlinks and fs.protected_regular cover part of the
second rule, for sticky world-writable directories and only when switched on
(they are off on our build machines); this holds whatever they say.
"""

import _thread
import errno
import fcntl
import os
import stat

from ..errors import UnsafePath, UsageError

_MAX_LINKS = 40  # as the kernel's path walk (MAXSYMLINKS, include/linux/namei.h 6.18)
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _others_can_write(st, euid):
    """True if a user other than root and euid can add, remove or rename entries of directory st."""
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH | stat.S_ISVTX)) or st.st_uid not in (0, euid)


def _trusted_owner(st, euid):
    return st.st_uid in (0, euid)


def _who(st):
    return f"uid {st.st_uid}"


_proc_dev = None


def _in_procfs(st):
    """/proc's links (/proc/self, /proc/<pid>/fd/N) are followed by the kernel without a path walk."""
    global _proc_dev
    if _proc_dev is None:
        try:
            _proc_dev = os.stat("/proc").st_dev
        except OSError:
            _proc_dev = -1
    return st.st_dev == _proc_dev


def _root():
    return os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _walk(path, strict, euid, fd=None, parts=None, links=0, label=None):
    """(fd of the directory holding path's last component, that name, its stat, links followed).

    The walk starts at fd with parts (default: path from / or the working
    directory) and takes the fd over. strict (trusted_dir): every component
    must pass the trusted-directory rule, else UnsafePath. Not strict
    (create_output): only symlinks in directories others can write must be
    the caller's (or root's). Raises OSError for a path that does not resolve.
    """
    if fd is None:
        fd = _root() if path.startswith("/") else os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        parts = path.split("/")
    parts = list(parts)
    label = label or path
    try:
        while True:
            while parts and parts[0] in ("", "."):
                parts.pop(0)
            if not parts:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            name = parts.pop(0)
            dir_st = os.fstat(fd)
            shared = _others_can_write(dir_st, euid)
            if name != ".." and all(p in ("", ".") for p in parts):
                return fd, name, dir_st, links
            try:
                entry = os.open(name, _PATH_FLAGS, dir_fd=fd)
            except OSError as e:
                raise OSError(e.errno, e.strerror, path) from None
            st = os.fstat(entry)
            if strict and not _trusted_owner(st, euid):
                os.close(entry)
                raise UnsafePath(f"{path}: {name} on the way belongs to {_who(st)}, not root")
            if strict and shared and not _sticky_trusted(dir_st, euid):
                os.close(entry)
                raise UnsafePath(f"{path}: a directory on the way can be written by other users")
            if stat.S_ISLNK(st.st_mode):
                if _in_procfs(dir_st):
                    os.close(entry)
                    entry = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                else:
                    if shared and not _trusted_owner(st, euid):
                        os.close(entry)
                        raise UnsafePath(f"refusing {'to write ' if not strict else ''}{label}: {name} is a "
                                         f"symlink of {_who(st)} in a directory other users can write")
                    target = os.readlink("", dir_fd=entry)
                    os.close(entry)
                    links += 1
                    if links > _MAX_LINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                    parts = target.split("/") + parts
                    if target.startswith("/"):
                        os.close(fd)
                        fd = _root()
                    continue
            elif not stat.S_ISDIR(st.st_mode):
                os.close(entry)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            os.close(fd)
            fd = entry
            if name == ".." and all(p in ("", ".") for p in parts):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    except BaseException:
        os.close(fd)
        raise


def _sticky_trusted(dir_st, euid):
    """A sticky directory of root's (or the caller's), like /tmp: others cannot rename what is not theirs."""
    return bool(dir_st.st_mode & stat.S_ISVTX) and dir_st.st_uid in (0, euid)


# --- nstrace's own directories --------------------------------------------------------

def trusted_dir(path, create=False):
    """Check that directory path is root's (or the caller's) alone; with create, make what is missing (0755).

    Returns path. Raises UnsafePath if another user could change it or
    anything on the way to it; OSError if it does not exist (and create is
    false) or cannot be made.
    """
    euid = os.geteuid()
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if create and parent != path and not os.path.lexists(parent):
        trusted_dir(parent, create=True)  # (an existing parent is checked by the walk, as every ancestor)
    fd, name, dir_st, _ = _walk(path, True, euid)
    try:
        if _others_can_write(dir_st, euid) and not _sticky_trusted(dir_st, euid):
            raise UnsafePath(f"{path}: its parent directory can be written by other users")
        try:
            entry = os.open(name, _PATH_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                # the umask can only take bits away: never more than 0755
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass  # another run made it meanwhile: checked below like any other
            entry = os.open(name, _PATH_FLAGS, dir_fd=fd)
        try:
            st = os.fstat(entry)
        finally:
            os.close(entry)
        _check(path, st, euid, stat.S_ISDIR, "directory")
        return path
    finally:
        os.close(fd)


def _check(path, st, euid, is_kind, kind):
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symlink, not a {kind}: remove it")
    if not is_kind(st.st_mode):
        raise UnsafePath(f"{path} is not a {kind}: remove it")
    if not _trusted_owner(st, euid):
        raise UnsafePath(f"{path} belongs to {_who(st)}, not root: remove it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(f"{path} can be written by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
                         "remove it")


def check_file(path):
    """The stat of file path (in a trusted directory) if it is a regular file root's alone; None if missing.

    Raises UnsafePath for a symlink, another owner, or group/other write.
    """
    try:
        fd = os.open(path, _PATH_FLAGS)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    _check(path, st, os.geteuid(), stat.S_ISREG, "regular file")
    return st


def read_file(path, binary=False):
    """The content of a file in a trusted directory, after check_file; None if missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symlink, not a regular file: remove it") from None
        raise
    with os.fdopen(fd, "rb") as f:
        _check(path, os.fstat(f.fileno()), os.geteuid(), stat.S_ISREG, "regular file")
        data = f.read()
    return data if binary else data.decode()


def write_whole(path, data, mode=0o644):
    """Write bytes or text to path (in a trusted directory) whole or not at all, with exactly mode.

    A run starting meanwhile reads the old file or the new one. The
    temporary file is made with O_EXCL and O_NOFOLLOW, and fchmod sets the
    mode whatever the umask.
    """
    # one temporary name per thread: the lab writes the same apt file from guests booting side by side
    tmp = f"{path}.{os.getpid()}.{_thread.get_ident()}.tmp"
    try:
        os.unlink(tmp)  # a leftover of a killed run with our pid
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            os.fchmod(fd, mode)
            f.write(data if isinstance(data, bytes) else data.encode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)


# --- files the caller asked for -------------------------------------------------------
#
# Nothing is opened for writing before nstrace knows what it is, so nothing can stall the open: a
# FIFO blocks its opener until someone reads (and hands that reader the file), a device driver's
# open may wait too. A new file is made with O_EXCL, so it can only be a new regular file. An
# existing entry is looked at through an O_PATH fd, which opens no FIFO and calls no driver
# (do_dentry_open returns before f_op->open for O_PATH, fs/open.c 6.18); then that very inode, not
# the name again, is opened through /proc/thread-self/fd, with O_NONBLOCK (a terminal's open waits
# for no carrier), cleared once open. A FIFO or socket is never opened at all.

_NEW = os.O_CREAT | os.O_EXCL | os.O_CLOEXEC  # O_EXCL follows no symlink: EEXIST, looked at below
# O_NOCTTY: a session leader without a terminal would take the one it opens as its own (tty_open,
# drivers/tty/tty_io.c 6.18)
_REOPEN = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DEV_NULL = os.makedev(1, 3)  # drivers/char/mem.c 6.18


def create_output(path, what=""):
    """An fd open for writing path (truncated), refusing what another user could have redirected
    and what could stall nstrace.

    The end of path must be a regular file (made if missing), a terminal or /dev/null; through
    /proc's fd links (/dev/stdout, /dev/fd/N) it may be any descriptor nstrace itself holds open
    for writing (a pipe, a socket), which is duplicated, not opened. Raises UnsafePath when the
    path goes through another user's symlink in a directory others can write, ends at another
    user's file (or one with other hard links) in such a directory, or ends at a FIFO, socket or
    other device; UsageError when it cannot be opened at all (no such directory, permission
    denied, a directory).
    """
    euid = os.geteuid()
    label = f"{what}{path}"
    try:
        return _create(path, euid, label)
    except OSError as e:
        raise UsageError(f"cannot write {label}: {e.strerror}") from None


def _create(path, euid, label):
    fd, name, dir_st, links = _walk(path, False, euid, label=label)
    while True:
        try:
            out, target = _open_last(fd, name, dir_st, euid, label)
            if out is not None:
                return out
            if links >= _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            start = _root() if target.startswith("/") else os.dup(fd)
        finally:
            os.close(fd)
        fd, name, dir_st, links = _walk(path, False, euid, start, target.split("/"), links + 1, label)


def _open_last(fd, name, dir_st, euid, label):
    """(fd open for writing, None), or (None, symlink target) when name is a symlink that may be followed."""
    try:
        return os.open(name, _NEW | os.O_WRONLY, 0o666, dir_fd=fd), None
    except FileExistsError:
        pass
    procfs = _in_procfs(dir_st)
    # /proc's fd links lead to the open file itself, not to a path: looked at where they lead
    entry = os.open(name, (os.O_PATH | os.O_CLOEXEC) if procfs else _PATH_FLAGS, dir_fd=fd)
    try:
        st = os.fstat(entry)
        if stat.S_ISLNK(st.st_mode):
            if _others_can_write(dir_st, euid) and not _trusted_owner(st, euid):
                raise UnsafePath(f"refusing to write {label}: {name} is a symlink of {_who(st)} in a "
                                 "directory other users can write")
            return None, os.readlink("", dir_fd=entry)
        own = _own_descriptor(name, st, label) if procfs else None
        if own is not None:
            return own, None
        if stat.S_ISREG(st.st_mode):
            _may_overwrite(st, dir_st, euid, label)
            return _reopen(entry, st, label, os.O_WRONLY | os.O_TRUNC), None
        return _reopen(entry, st, label, os.O_WRONLY, devices=True), None
    finally:
        os.close(entry)


def _own_descriptor(name, st, label):
    """A duplicate of nstrace's descriptor number name if that is the file st; None if it is not.

    What the caller handed over is written where it was opened (a pipe stays a pipe, an appending
    file appends); one open only for reading is refused, not reopened for writing over the input.
    """
    if not (name.isascii() and name.isdigit()):
        return None
    try:
        own = os.fstat(int(name))
        access = fcntl.fcntl(int(name), fcntl.F_GETFL) & (os.O_ACCMODE | os.O_PATH)
    except OSError:
        return None
    if (own.st_dev, own.st_ino) != (st.st_dev, st.st_ino):
        return None
    if access not in (os.O_WRONLY, os.O_RDWR):
        raise UnsafePath(f"refusing to write {label}: nstrace holds it open for reading only")
    return os.dup(int(name))


def _may_overwrite(st, dir_st, euid, label):
    """An existing file in a directory others can write is written only if it is the caller's alone."""
    if _others_can_write(dir_st, euid) and (st.st_uid != euid or st.st_nlink != 1):
        why = f"belongs to {_who(st)}" if st.st_uid != euid else f"has {st.st_nlink} hard links"
        raise UnsafePath(f"refusing to write {label}: it {why}, in a directory other users can write; "
                         "remove it or write elsewhere")


def _reopen(entry, st, label, flags, devices=False):
    """The file of O_PATH fd entry, opened with flags: a regular file, or (devices) a terminal or /dev/null."""
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    if not (stat.S_ISREG(st.st_mode) or devices and stat.S_ISCHR(st.st_mode)):
        raise UnsafePath(f"refusing to write {label}: it is {_kind(st)}, not a regular file")
    out = os.open(f"/proc/thread-self/fd/{entry}", flags | _REOPEN)
    try:
        # a terminal answers only an open descriptor; a device that is neither is closed unwritten
        if stat.S_ISCHR(st.st_mode) and st.st_rdev != _DEV_NULL and not os.isatty(out):
            raise UnsafePath(f"refusing to write {label}: it is a device, neither a terminal nor /dev/null")
        os.set_blocking(out, True)
    except BaseException:
        os.close(out)
        raise
    return out


def _kind(st):
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISCHR, "a device")):
        if test(st.st_mode):
            return kind
    return f"a file of type {stat.S_IFMT(st.st_mode):o}"


def open_beneath(directory, name):
    """(fd open for reading and writing, not truncated; True if the file was made now) for
    directory/name, where directory is the caller's and name came from outside (a lab guest).

    directory is resolved as create_output resolves a path. Below it no symlink is followed, not
    even root's or the caller's: a link that is fine in a path the caller typed can still lead a
    name chosen elsewhere out of the directory. The end must be a regular file or nothing (then it
    is made). Raises UnsafePath naming the symlink on the way or refusing what is at the end,
    UsageError when it cannot be opened at all.
    """
    euid = os.geteuid()
    label = os.path.join(directory, name)
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"cannot write {label}: not a plain name inside {directory}")
    try:
        fd, _, dir_st, _ = _walk(os.path.join(directory, parts[0]), False, euid, label=label)
        try:
            for depth, part in enumerate(parts[:-1], 1):
                entry = os.open(part, _PATH_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = entry
                dir_st = os.fstat(fd)
                if stat.S_ISLNK(dir_st.st_mode):
                    raise UnsafePath(f"refusing to write {label}: {'/'.join(parts[:depth])} is a symlink, "
                                     "and a name from outside is never followed through one")
                if not stat.S_ISDIR(dir_st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            return _open_last_beneath(fd, parts[-1], dir_st, euid, label)
        finally:
            os.close(fd)
    except OSError as e:
        raise UsageError(f"cannot write {label}: {e.strerror}") from None


def _open_last_beneath(fd, name, dir_st, euid, label):
    try:
        return os.open(name, _NEW | os.O_RDWR, 0o666, dir_fd=fd), True
    except FileExistsError:
        pass
    entry = os.open(name, _PATH_FLAGS, dir_fd=fd)
    try:
        st = os.fstat(entry)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"refusing to write {label}: it is a symlink, and a name from outside is never "
                             "followed through one")
        if stat.S_ISREG(st.st_mode):
            _may_overwrite(st, dir_st, euid, label)
        return _reopen(entry, st, label, os.O_RDWR), False
    finally:
        os.close(entry)
