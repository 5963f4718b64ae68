// The exports a server offers: name → volume, and each volume's capabilities turned into the
// NBD transmission flags once, when the export is added (nbdkit asks its backend the same way).
import { MAX_PAYLOAD, TransmissionFlag } from '../protocol/constants.js';
import type { ExportCatalog, ExportDescriptor } from '../protocol/handshake.js';
import type { Volume, VolumeCapabilities } from '../volume/volume.js';

export interface ExportEntry {
  readonly descriptor: ExportDescriptor;
  readonly volume: Volume;
}

/** Transmission flags (without SEND_DF, which depends on structured replies) for a volume. */
export function transmissionFlagsFor(cap: VolumeCapabilities): number {
  let f = TransmissionFlag.HAS_FLAGS;
  if (cap.readOnly) f |= TransmissionFlag.READ_ONLY;
  if (cap.flush) f |= TransmissionFlag.SEND_FLUSH;
  if (cap.fua) f |= TransmissionFlag.SEND_FUA;
  if (cap.trim) f |= TransmissionFlag.SEND_TRIM;
  if (cap.zero) f |= TransmissionFlag.SEND_WRITE_ZEROES;
  if (cap.zero && cap.fastZero) f |= TransmissionFlag.SEND_FAST_ZERO;
  if (cap.cache) f |= TransmissionFlag.SEND_CACHE;
  if (cap.multiConn) f |= TransmissionFlag.CAN_MULTI_CONN;
  return f;
}

export class ExportRegistry implements ExportCatalog {
  private readonly entries = new Map<string, ExportEntry>();

  add(name: string, volume: Volume, description = ''): ExportEntry {
    if (this.entries.has(name)) throw new Error(`export "${name}" is defined twice`);
    const entry: ExportEntry = {
      volume,
      descriptor: {
        name,
        description,
        size: volume.size,
        flags: transmissionFlagsFor(volume.capabilities),
        minBlockSize: 1,
        preferredBlockSize: 4096,
        maxBlockSize: MAX_PAYLOAD,
      },
    };
    this.entries.set(name, entry);
    return entry;
  }

  /** Stops offering an export (a volume deleted or being resized online); its open connections keep their volume. */
  remove(name: string): void {
    this.entries.delete(name);
  }

  list(): ExportDescriptor[] {
    return [...this.entries.values()].map((e) => e.descriptor);
  }

  /** The empty name selects the first export, so `nbd://host` works with a single export. */
  find(name: string): ExportDescriptor | undefined {
    return this.entry(name)?.descriptor;
  }

  entry(name: string): ExportEntry | undefined {
    if (name === '') return this.entries.values().next().value;
    return this.entries.get(name);
  }

  volumes(): Volume[] {
    return [...this.entries.values()].map((e) => e.volume);
  }
}
