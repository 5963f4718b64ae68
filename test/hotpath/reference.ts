// Plain TypeScript reference implementations of the bitmap and diff operations, for property
// tests of the WASM kernels. Deliberately simple: one bit at a time.

export class RefBitmap {
  readonly bytes: Uint8Array;
  constructor(readonly bits: number) {
    this.bytes = new Uint8Array(Math.ceil(bits / 8));
  }
  get(i: number): boolean {
    return (this.bytes[i >> 3]! & (1 << (i & 7))) !== 0;
  }
  fill(start: number, count: number, value: boolean): void {
    for (let i = start; i < start + count; i++) {
      if (value) this.bytes[i >> 3]! |= 1 << (i & 7);
      else this.bytes[i >> 3]! &= ~(1 << (i & 7));
    }
  }
  count(start: number, count: number): number {
    let n = 0;
    for (let i = start; i < start + count; i++) if (this.get(i)) n++;
    return n;
  }
  runs(from: number, max: number): Array<{ start: number; length: number }> {
    const out: Array<{ start: number; length: number }> = [];
    let i = from;
    while (i < this.bits && out.length < max) {
      if (!this.get(i)) {
        i++;
        continue;
      }
      const start = i;
      while (i < this.bits && this.get(i)) i++;
      out.push({ start, length: i - start });
    }
    return out;
  }
  or(other: RefBitmap): void {
    for (let i = 0; i < this.bytes.length; i++) this.bytes[i]! |= other.bytes[i]!;
  }
}

export function refDiffRuns(a: ArrayLike<bigint>, b: ArrayLike<bigint>, from: number, max: number): Array<{ start: number; length: number }> {
  const out: Array<{ start: number; length: number }> = [];
  let i = from;
  while (i < a.length && out.length < max) {
    if (a[i] === b[i]) {
      i++;
      continue;
    }
    const start = i;
    while (i < a.length && a[i] !== b[i]) i++;
    out.push({ start, length: i - start });
  }
  return out;
}
