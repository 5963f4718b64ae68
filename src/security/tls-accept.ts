// The server side of a TLS handshake on a socket this process already accepted (NBD after
// STARTTLS, a peer-link connection). It goes through a never-listening tls.Server rather than a
// bare `new TLSSocket(socket, { isServer: true })`: only tls.Server checks a client certificate
// against the CA (a bare TLSSocket takes any certificate, or none checked, and says 'secure'),
// and one server per handshake ties its events to this socket alone. The server rebuilds the
// credentials each time (about 1 ms for an RSA key, next to the handshake's own few), once per
// connection.
import type net from 'node:net';
import tls from 'node:tls';

/** A failed handshake; `socket` is gone, but says why a client certificate was refused (authorizationError). */
export type AcceptDone = (err: Error | null, socket: tls.TLSSocket) => void;

/** Runs the handshake as the server; calls `done` once, with the secured socket or the failure. */
export function acceptTls(options: tls.TlsOptions, socket: net.Socket, done: AcceptDone): void {
  const server = tls.createServer(options);
  server.once('secureConnection', (t: tls.TLSSocket) => done(null, t));
  server.once('tlsClientError', (err: Error, t: tls.TLSSocket) => {
    t.destroy();
    done(err, t);
  });
  server.emit('connection', socket);
}
