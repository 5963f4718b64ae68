// Receiving from a socket into memory we own instead of a fresh Buffer per read: one reusable
// buffer, or, while a large payload is coming, straight into that payload's own buffer.
//
// Node's 'data' events allocate a new 64 KiB buffer per read and go through the stream
// machinery; `onread` (a public net.Socket option) reads into a buffer we own with a plain
// callback, which measured ~1.7x the receive throughput (docs/BENCHMARKS.md). net.Server has
// no such option for accepted sockets, so the accepted socket is created paused and its handle
// is moved into a new net.Socket that has one. That relies on `socket._handle`, an internal
// field every Node release since v12 has kept; `adoptWithOnRead` fails loudly if it is gone.
import net from 'node:net';

/** Per-read buffer: large enough that a 1 MiB WRITE payload arrives in a few reads. */
export const RECEIVE_BUFFER_SIZE = 256 * 1024;

export interface ReceiveSink {
  /** Bytes read into the shared buffer; only valid during the call: copy what must outlive it. */
  onChunk(chunk: Buffer): void;
  /**
   * Where the next read may go instead of the shared buffer: the rest of a large payload being
   * received, so it needs no copy. Asked before every read.
   */
  directTarget?(): Buffer | undefined;
  /** `n` bytes were read straight into the last `directTarget`. */
  onDirect?(n: number): void;
}

/**
 * Moves a paused, freshly accepted socket's handle into a socket that reads into a buffer we own
 * (or straight into the sink's `directTarget`) and hands each read to the sink.
 */
export function adoptWithOnRead(accepted: net.Socket, sink: ReceiveSink): net.Socket {
  const holder = accepted as unknown as { _handle: unknown };
  const handle = holder._handle;
  if (!handle) throw new Error('net.Socket._handle is missing: this Node.js version is not supported');
  holder._handle = null;
  const socket = new net.Socket({ handle, readable: true, writable: true, onread: onReadOptions(sink) } as net.SocketConstructorOpts & { handle: unknown });
  // Flowing mode, so the end of the client's stream is emitted as 'end' (and the socket closes).
  socket.resume();
  return socket;
}

/**
 * Feeds a socket that cannot take `onread` to the same sink, from its 'data' events: a TLSSocket,
 * whose reads are decrypted records rather than the kernel's bytes. Each chunk is a fresh
 * Buffer, so there is no direct target (a body costs one copy, as the decryption made one anyway).
 */
export function receiveFromStream(socket: net.Socket, sink: ReceiveSink): void {
  socket.on('data', (chunk: Buffer) => sink.onChunk(chunk));
}

/**
 * One receive buffer for every socket of the process. A read is handed to its sink and consumed
 * before the event loop runs another, and sinks copy what must outlive the call, so sockets never
 * need one each: an idle connection holds no receive buffer at all.
 */
let shared: Buffer | undefined;

/** The `onread` option of a socket that feeds `sink` (for sockets we create, like a dialed one). */
export function onReadOptions(sink: ReceiveSink): net.OnReadOpts {
  shared ??= Buffer.allocUnsafe(RECEIVE_BUFFER_SIZE);
  const buffer = shared;
  return {
    // Node asks for the next read's buffer after each read (and once at the start).
    buffer: () => sink.directTarget?.() ?? buffer,
    callback: (n, buf) => {
      if (buf === buffer) sink.onChunk(buffer.subarray(0, n));
      else sink.onDirect!(n);
      return true; // keep reading
    },
  };
}
