// The size rule: offered only once both paths negotiated it; never falls.
import { describe, expect, it } from 'vitest';
import { sizeToOffer } from '../../src/attach/offered-size.js';

describe('sizeToOffer', () => {
  it('rises to the smaller of the two paths, waits for a path that never connected, never falls', () => {
    expect(sizeToOffer(64, [128, 96])).toBe(96);
    expect(sizeToOffer(64, [128, undefined])).toBe(64);
    expect(sizeToOffer(64, [32, 128])).toBe(64);
    expect(sizeToOffer(64, [64, 64])).toBe(64);
    expect(sizeToOffer(64, [])).toBe(64);
  });
});
