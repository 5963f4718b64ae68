#!/usr/bin/python3
"""A FUSE filesystem that forgets what was never synced, on command (LazyFS's idea).

    powercut_fs.py BACKING MOUNTPOINT

Passes every operation through to the directory BACKING, and remembers, per file, the content
each 512-byte sector had at the file's last fsync/fdatasync (and its size then), and which
directory entries were created or renamed since their directory's last fsync. Commands on
stdin, one per line, each answered on stdout:

    cut all          power loss: every unsynced sector, size and entry goes back to its last
                     synced state; then the filesystem unmounts and exits (the "reboot")
    cut torn SEED    the same, but each unsynced sector is kept or dropped at random (seeded,
                     replayable): a write torn at sector granularity
    stop             unmount and exit, dropping nothing (a clean shutdown)

It prints "ready" once mounted and "cut: N sectors, M sizes, K entries reverted" after a cut.
Send SIGUSR2 after a command until it is answered (why: see commands()).
Whoever uses it kills the processes using the mount before a cut (their page cache goes with the
unmount, as with a real power cut). Not supported: fallocate (EOPNOTSUPP: callers fall back),
SEEK_DATA/SEEK_HOLE (the kernel reports all data), hard links, xattrs, and restoring a file that
an unsynced unlink removed. A file an unsynced rename replaced is kept (hard-linked beside the
backing directory, in BACKING.replaced) and comes back when the cut reverts the rename.

An operation that fails in a way the filesystem did not expect (a bug here, not the disk saying
no) is answered with EIO and logged on stderr as "powercut: unexpected …" with its traceback,
so the filesystem stays mounted and whoever drives it can report the line; a fatal signal
prints the Python stack (faulthandler), and SIGUSR1 prints every thread's stack.
"""
import errno
import ctypes
import faulthandler
import functools
import inspect
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import traceback

import pyfuse3
import trio

SECTOR = 512


class Unsynced:
    """What one file held at its last sync: sector index -> bytes (b'' past the then-end), size."""

    def __init__(self, size):
        self.size = size
        self.sectors = {}


class PowerCutFs(pyfuse3.Operations):
    def __init__(self, root):
        super().__init__()
        self.root = root
        self.paths = {pyfuse3.ROOT_INODE: root}
        self.fds = {}  # fh -> (fd, inode)
        self.unsynced = {}  # inode -> Unsynced
        self.new_entries = {}  # directory path -> list of ('create', path) / ('rename', new, old, replaced)
        # A file an unsynced rename replaced, kept by a hard link until its directory is synced.
        self.stash = root + '.replaced'
        os.makedirs(self.stash, exist_ok=True)
        self.clear_stash()
        self.stashed = {}  # stash path -> inode
        self.stash_count = 0
        self.lock = threading.RLock()

    # --- paths -------------------------------------------------------------------------------
    def path(self, inode):
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT)

    def child(self, parent, name):
        return os.path.join(self.path(parent), os.fsdecode(name))

    def attrs(self, path):
        try:
            st = os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno)
        a = pyfuse3.EntryAttributes()
        ino = pyfuse3.ROOT_INODE if path == self.root else st.st_ino
        self.paths[ino] = path
        a.st_ino = ino
        for f in ('st_mode', 'st_nlink', 'st_uid', 'st_gid', 'st_rdev', 'st_size', 'st_atime_ns', 'st_mtime_ns', 'st_ctime_ns'):
            setattr(a, f, getattr(st, f))
        a.st_blksize = 4096
        a.st_blocks = st.st_blocks
        a.generation = 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        return a

    # --- remembering what is not synced ------------------------------------------------------
    def before_change(self, inode, fd, offset, length):
        """Saves the synced content of the sectors [offset, offset + length) touches, once."""
        u = self.unsynced.get(inode)
        if u is None:
            u = self.unsynced[inode] = Unsynced(os.fstat(fd).st_size)
        first, last = offset // SECTOR, (offset + max(length, 1) - 1) // SECTOR
        for s in range(first, last + 1):
            if s not in u.sectors:
                u.sectors[s] = os.pread(fd, SECTOR, s * SECTOR) if s * SECTOR < u.size else b''

    def entry_changed(self, directory, change):
        self.new_entries.setdefault(directory, []).append(change)

    def synced(self, inode):
        self.unsynced.pop(inode, None)

    def directory_synced(self, directory):
        for change in self.new_entries.pop(directory, []):
            if change[0] == 'rename' and change[3] is not None:
                self.stashed.pop(change[3], None)
                os.unlink(change[3])

    def clear_stash(self):
        for name in os.listdir(self.stash):
            os.unlink(os.path.join(self.stash, name))

    def current_path(self, inode):
        """Where the file `inode` is now: its last known name, or its stash link; None if gone."""
        for path in [self.paths.get(inode)] + [p for p, i in self.stashed.items() if i == inode]:
            try:
                if path is not None and os.lstat(path).st_ino == inode:
                    return path
            except FileNotFoundError:
                pass
        return None

    def cut(self, rng):
        """Puts back what was not synced (all of it, or each sector with probability 1/2)."""
        sectors = sizes = entries = 0
        for inode, u in self.unsynced.items():
            path = self.current_path(inode)
            if path is None:
                continue
            fd = os.open(path, os.O_WRONLY)
            try:
                for s, old in sorted(u.sectors.items()):
                    if rng is not None and rng.random() < 0.5:
                        continue  # this sector reached the disk before the cut
                    if old:
                        os.pwrite(fd, old, s * SECTOR)
                    sectors += 1
                if os.fstat(fd).st_size != u.size and rng is None:
                    os.ftruncate(fd, u.size)
                    sizes += 1
                elif rng is not None and os.fstat(fd).st_size > u.size and rng.random() < 0.5:
                    os.ftruncate(fd, u.size)
                    sizes += 1
            finally:
                os.close(fd)
        for directory, changes in self.new_entries.items():
            for change in reversed(changes):
                if rng is not None and rng.random() < 0.5:
                    continue
                if change[0] == 'create' and os.path.exists(change[1]):
                    os.unlink(change[1]) if not os.path.isdir(change[1]) else os.rmdir(change[1])
                    entries += 1
                elif change[0] == 'rename' and os.path.exists(change[1]):
                    os.rename(change[1], change[2])
                    if change[3] is not None:
                        os.rename(change[3], change[1])  # the file the rename replaced is back
                    entries += 1
        self.clear_stash()  # renames the cut kept: the files they replaced are gone for good
        return sectors, sizes, entries

    # --- operations ---------------------------------------------------------------------------
    async def lookup(self, parent, name, ctx=None):
        return self.attrs(self.child(parent, name))

    async def getattr(self, inode, ctx=None):
        return self.attrs(self.path(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self.path(inode)
        try:
            if fields.update_size:
                fd = os.open(path, os.O_RDWR)
                try:
                    size = os.fstat(fd).st_size
                    if attr.st_size < size:
                        self.before_change(inode, fd, attr.st_size, size - attr.st_size)
                    else:
                        self.before_change(inode, fd, size, 0)
                    os.ftruncate(fd, attr.st_size)
                finally:
                    os.close(fd)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns, attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno)
        return self.attrs(path)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, inode, start, token):
        path = self.path(inode)
        names = sorted(os.listdir(path))
        for i, name in enumerate(names[start:], start):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attrs(os.path.join(path, name)), i + 1):
                break

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        self.directory_synced(self.path(fh))

    async def mkdir(self, parent, name, mode, ctx):
        path = self.child(parent, name)
        try:
            os.mkdir(path, mode)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno)
        self.entry_changed(self.path(parent), ('create', path))
        return self.attrs(path)

    async def rmdir(self, parent, name, ctx):
        try:
            os.rmdir(self.child(parent, name))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno)

    async def unlink(self, parent, name, ctx):
        try:
            os.unlink(self.child(parent, name))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno)

    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        old, new = self.child(parent_old, name_old), self.child(parent_new, name_new)
        replaced = None
        if os.path.lexists(new) and not os.path.isdir(new):
            self.stash_count += 1
            replaced = os.path.join(self.stash, f'{self.stash_count}-{os.path.basename(new)}')
            os.link(new, replaced)
            self.stashed[replaced] = os.lstat(replaced).st_ino
        try:
            os.rename(old, new)
        except OSError as e:
            if replaced is not None:
                self.stashed.pop(replaced)
                os.unlink(replaced)
            raise pyfuse3.FUSEError(e.errno)
        ino = os.lstat(new).st_ino
        self.paths[ino] = new
        self.entry_changed(self.path(parent_new), ('rename', new, old, replaced))

    def before_truncate(self, inode, path):
        """An open with O_TRUNC empties the file: what it held is unsynced from here."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno)
        try:
            self.before_change(inode, fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    async def open(self, inode, flags, ctx):
        if flags & os.O_TRUNC:
            self.before_truncate(inode, self.path(inode))
        try:
            fd = os.open(self.path(inode), flags & ~os.O_CREAT)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno)
        self.fds[fd] = (fd, inode)
        return pyfuse3.FileInfo(fh=fd)

    async def create(self, parent, name, mode, flags, ctx):
        path = self.child(parent, name)
        existed = os.path.exists(path)
        if existed and flags & os.O_TRUNC:
            self.before_truncate(os.lstat(path).st_ino, path)
        try:
            fd = os.open(path, flags | os.O_CREAT, mode)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno)
        a = self.attrs(path)
        if not existed:
            self.entry_changed(self.path(parent), ('create', path))
            self.unsynced[a.st_ino] = Unsynced(0)
        self.fds[fd] = (fd, a.st_ino)
        return pyfuse3.FileInfo(fh=fd), a

    async def read(self, fh, offset, size):
        return os.pread(fh, size, offset)

    async def write(self, fh, offset, buf):
        self.before_change(self.fds[fh][1], fh, offset, len(buf))
        return os.pwrite(fh, buf, offset)

    async def fsync(self, fh, datasync):
        os.fsync(fh)
        self.synced(self.fds[fh][1])

    async def flush(self, fh):
        pass

    async def release(self, fh):
        self.fds.pop(fh, None)
        os.close(fh)

    async def forget(self, inode_list):
        pass

    async def statfs(self, ctx):
        st = os.statvfs(self.root)
        s = pyfuse3.StatvfsData()
        for f in ('f_bsize', 'f_frsize', 'f_blocks', 'f_bfree', 'f_bavail', 'f_files', 'f_ffree', 'f_favail', 'f_namemax'):
            setattr(s, f, getattr(st, f))
        return s


def guarded(op):
    """Answers an exception the operation did not expect with EIO (a crash would leave the mount
    dead: ENOTCONN) and logs it, so the harness reports a harness bug instead of a disk error."""
    @functools.wraps(op)
    async def run(self, *args):
        try:
            with self.lock:  # never half-way when a cut comes (commands runs on its own thread)
                return await op(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            print(f'powercut: unexpected {e!r} in {op.__name__}{args!r}', file=sys.stderr, flush=True)
            traceback.print_exc()
            raise pyfuse3.FUSEError(e.errno if isinstance(e, OSError) and e.errno else errno.EIO)
    return run


for _name, _op in list(vars(PowerCutFs).items()):
    if inspect.iscoroutinefunction(_op):
        setattr(PowerCutFs, _name, guarded(_op))


def commands(fs, mountpoint):
    """Reads the commands on a thread of its own, not in the event loop: pyfuse3 waits until
    /dev/fuse is readable and then reads it, holding the GIL, and a request can be withdrawn in
    between (the process that asked was killed: the power cut kills the node); that read then
    blocks every Python thread until some other request comes. Whoever sends a command therefore
    also sends SIGUSR2 until it is answered: the read ends with EINTR, pyfuse3 waits again, and
    this thread runs. The cut runs under the operations' lock, then detaches the mount and ends
    the process (the connection goes with it)."""
    for line in sys.stdin:
        words = line.split()
        if words[:2] == ['cut', 'all'] or words[:2] == ['cut', 'torn']:
            rng = random.Random(int(words[2])) if words[1] == 'torn' else None
            with fs.lock:
                try:
                    sectors, sizes, entries = fs.cut(rng)
                    print(f'cut: {sectors} sectors, {sizes} sizes, {entries} entries reverted', flush=True)
                except Exception as e:
                    traceback.print_exc()
                    print(f'cut failed: {e!r}', flush=True)
                detach_and_exit(mountpoint)
        if words == ['stop']:
            with fs.lock:
                detach_and_exit(mountpoint)
        print(f'unknown command: {line.strip()}', flush=True)
    with fs.lock:
        detach_and_exit(mountpoint)  # stdin closed: whoever drove it is gone


def detach_and_exit(mountpoint):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mountpoint), 2) != 0:  # MNT_DETACH; not root: fusermount3 does it
        subprocess.run(['fusermount3', '-u', '-z', mountpoint], check=False)
    sys.stderr.flush()
    os._exit(0)


if __name__ == '__main__':
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the stacks, when it does not answer
    signal.signal(signal.SIGUSR2, lambda *_: None)  # only interrupts a blocked read (see commands)
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = PowerCutFs(os.path.realpath(backing))
    options = set(pyfuse3.default_options)
    options.add('fsname=powercut')
    pyfuse3.init(fs, mountpoint, options)
    threading.Thread(target=commands, args=(fs, mountpoint), daemon=True).start()
    print('ready', flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
