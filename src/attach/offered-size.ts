// The size attach offers new local clients for a volume grown online.
//
// THE SIZE RULE: a size is offered only once BOTH paths have negotiated at least that size with
// their node (a path's size is what its connection last negotiated; the cluster only grows
// volumes, so a node that once served a size serves at least that from then on). Offered any
// earlier, a fail-over could land on a node whose connection still has the old size, and it
// refuses every request beyond the old end. So the offer is the smaller of the two paths' sizes,
// it waits while a path has never connected, and it never falls (a node serving less than the
// offer is not used: attach-volume.ts).
export function sizeToOffer(offered: number, pathSizes: ReadonlyArray<number | undefined>): number {
  const known = pathSizes.filter((s): s is number => s !== undefined);
  if (known.length < pathSizes.length || known.length === 0) return offered;
  return Math.max(offered, Math.min(...known));
}
