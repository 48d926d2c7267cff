/**
 * Pins: the points of a group's history that views, markers and running
 * exports read, so retention keeps them (MISSION §5: markers, snapshots and
 * clones pin the history they need).
 *
 * A pin (holder, k, overlay) keeps the image before T_k readable: retention
 * may not merge transactions across the boundary before T_k, nor merge T_k
 * itself when the point lies inside it (overlay). Pin sources are asked
 * when retention runs (markers: many, cheap to resolve then).
 */
import type { ManagerCatalog } from './catalog';

export interface Pin {
  holder: string;
  k: number;
  overlay: boolean;
}

export class Pins {
  private readonly pins = new Map<string, number>();
  private readonly overlayPins = new Map<string, number>();
  private readonly sources: Array<() => Pin[]> = [];

  /** `check` refuses a pin retention can no longer honour (a point merged or dropped). */
  constructor(
    private readonly catalog: ManagerCatalog,
    private readonly check: (k: number, overlay: boolean) => void,
  ) {}

  pin(holder: string, k: number, overlay = false): void {
    this.check(k, overlay);
    this.pins.set(holder, k);
    if (overlay) this.overlayPins.set(holder, k);
    else this.overlayPins.delete(holder);
  }

  unpin(holder: string): void {
    this.pins.delete(holder);
    this.overlayPins.delete(holder);
  }

  /** Every pinned point: boundary before T_k, and whether T_k must stay whole. */
  points(): Pin[] {
    const out = [...this.pins].map(([holder, k]) => ({ holder, k, overlay: this.overlayPins.get(holder) === k }));
    for (const src of this.sources) out.push(...src());
    return out;
  }

  addSource(fn: () => Pin[]): void {
    this.sources.push(fn);
  }

  /** The pin a point at seq p needs: (k, overlay), or null if p is not committed yet. */
  ofSeq(p: number): { k: number; overlay: boolean } | null {
    const n = this.catalog.transactionForSeq(p);
    if (n === undefined) return null;
    const rec = this.catalog.transaction(n)!;
    return p >= rec.lastSeq ? { k: n + 1, overlay: false } : { k: n, overlay: true };
  }

  /** The first pinned transaction (everything from it on is pinned), or null. */
  from(): number | null {
    let min: number | null = null;
    for (const { k } of this.points()) if (min === null || k < min) min = k;
    return min;
  }
}
