// Every command and every error code, sent by libnbd (nbdsh), with structured and simple replies.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, serveExport, type Fixture, type ServeMode } from '../support/fixture.js';
import { startNbdMirror } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

// Runs inside nbdsh (python libnbd). `uri`, `ro_uri` and `structured` are set before it.
const script = String.raw`
import errno
def expect_err(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        assert e.errnum == code, "expected %s, got %s (%s)" % (errno.errorcode[code], e.errnum, e.string)
        return
    raise AssertionError("expected %s, call succeeded" % errno.errorcode[code])

h = nbd.NBD()
h.set_request_structured_replies(structured)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
assert h.get_structured_replies_negotiated() == structured
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION) == structured
size = h.get_size()
assert size == 64 * 1024 * 1024

# data commands
h.pwrite(b"\xab" * 65536, 0)
h.pwrite(b"\xcd" * 4096, 1 << 20, nbd.CMD_FLAG_FUA)
assert h.pread(65536, 0) == b"\xab" * 65536
assert h.pread(4096, 1 << 20) == b"\xcd" * 4096
h.flush()
h.cache(1 << 20, 0)
h.trim(4096, 0)
assert h.pread(4096, 0) == bytes(4096)
h.zero(4096, 4096)
h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE)
h.zero(4096, 12288, nbd.CMD_FLAG_FAST_ZERO)
h.zero(4096, 16384, nbd.CMD_FLAG_FUA)
assert h.pread(20480, 0)[4096:] == bytes(16384)
assert h.pread(512 * 1024, 0)[20480:65536] == b"\xab" * (65536 - 20480)
if structured:
    # DF: the whole read must come back as one chunk
    chunks = []
    def chunk(subbuf, offset, status, err):
        chunks.append((offset, len(subbuf), status))
        return 0
    buf = h.pread_structured(512 * 1024, 0, chunk, nbd.CMD_FLAG_DF)
    assert chunks == [(0, 512 * 1024, nbd.READ_DATA)], chunks
    assert buf[20480:65536] == b"\xab" * (65536 - 20480)
# a large sparse read (holes may come back as OFFSET_HOLE chunks)
assert h.pread(4 << 20, 8 << 20) == bytes(4 << 20)

if structured:
    seen = []
    def cb(metacontext, offset, entries, err):
        seen.append(list(entries))
        return 0
    h.block_status(2 << 20, 0, cb)
    ents = seen[-1]
    assert sum(ents[0::2]) <= 2 << 20 and len(ents) >= 4, ents
    h.block_status(2 << 20, 0, cb, nbd.CMD_FLAG_REQ_ONE)
    assert len(seen[-1]) == 2, seen[-1]
    # the unwritten tail of the export is a hole that reads as zeroes
    h.block_status(1 << 20, size - (1 << 20), cb)
    assert seen[-1] == [1 << 20, nbd.STATE_HOLE | nbd.STATE_ZERO], seen[-1]

# errors: client-side checks off so the server must refuse
h.set_strict_mode(0)
expect_err(errno.ENOSPC, h.pwrite, b"x" * 8192, size - 4096)
expect_err(errno.EINVAL, h.pread, 8192, size - 4096)
expect_err(errno.EINVAL, h.trim, 8192, size - 4096)
expect_err(errno.EINVAL, h.cache, 8192, size - 4096)
expect_err(errno.EINVAL, h.pread, 4096, 0, nbd.CMD_FLAG_FUA)
expect_err(errno.EINVAL, h.trim, 4096, 0, nbd.CMD_FLAG_REQ_ONE)
if structured:
    expect_err(errno.EINVAL, h.block_status, 8192, size - 4096, cb)
assert h.pread(4096, 1 << 20) == b"\xcd" * 4096
# requests over the advertised 32 MiB maximum, up to 64 MiB, are served (as nbdkit does; libnbd
# itself refuses more than 64 MiB, so the refusal past that is tested with our own client)
big = b"y" * (40 << 20)
h.pwrite(big, 16 << 20)
assert h.pread(40 << 20, 16 << 20) == big
h.shutdown()

# a read-only export refuses every write with EPERM
r = nbd.NBD()
r.connect_uri(ro_uri)
assert r.is_read_only()
r.set_strict_mode(0)
expect_err(errno.EPERM, r.pwrite, b"z" * 512, 0)
expect_err(errno.EPERM, r.trim, 512, 0)
expect_err(errno.EPERM, r.zero, 512, 0)
assert len(r.pread(512, 0)) == 512
r.shutdown()

# an unknown export fails at GO, and the error names it
u = nbd.NBD()
try:
    u.connect_uri(uri.rsplit("/", 1)[0] + "/no-such-export")
    raise AssertionError("connected to a missing export")
except nbd.Error as e:
    assert "no-such-export" in e.string or "unknown" in e.string.lower(), e.string
print("ALL OK")
`;

const variants: Array<[ServeMode, string]> = [
  ['standalone', 'auto'],
  ['standalone', 'mmap'],
  ['mirrored', 'auto'],
];

describe.skipIf(missingTools('nbdsh').length > 0).each(variants)('nbdsh: every command and error code (%s, --io %s)', (mode, io) => {
  let f: Fixture;
  let roUri: string;
  let stopRo: () => Promise<unknown>;
  beforeAll(async () => {
    f = await serveExport(mode, { size: '64M', extraArgs: ['--io', io] });
    const ro = await startNbdMirror(['--export', `ro=${f.dir}/ro.img`, '--size', '1M', '--read-only']);
    roUri = ro.uri('ro');
    stopRo = () => ro.stop();
    writeFileSync(join(f.dir, 'commands.py'), script);
  });
  afterAll(async () => {
    await stopRo?.();
    await f?.cleanup();
  });

  for (const structured of [true, false]) {
    it(`${structured ? 'structured' : 'simple'} replies`, async () => {
      const code = `uri = ${JSON.stringify(f.uri)}; ro_uri = ${JSON.stringify(roUri)}; structured = ${structured ? 'True' : 'False'}; exec(open(${JSON.stringify(join(f.dir, 'commands.py'))}).read())`;
      expect(await run('nbdsh', ['-c', code])).toContain('ALL OK');
    });
  }
});
