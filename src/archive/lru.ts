/** A least-recently-used map bounded by the total "weight" of its values. */
export class LruCache<V> {
  private readonly map = new Map<string, { v: V; w: number }>();
  private total = 0;

  constructor(
    private readonly maxWeight: number,
    private readonly weigh: (v: V) => number,
  ) {}

  get(key: string): V | undefined {
    const e = this.map.get(key);
    if (!e) return undefined;
    this.map.delete(key);
    this.map.set(key, e);
    return e.v;
  }

  set(key: string, v: V): void {
    const old = this.map.get(key);
    if (old) {
      this.total -= old.w;
      this.map.delete(key);
    }
    const w = this.weigh(v);
    if (w > this.maxWeight) return;
    this.map.set(key, { v, w });
    this.total += w;
    for (const [k, e] of this.map) {
      if (this.total <= this.maxWeight) break;
      this.map.delete(k);
      this.total -= e.w;
    }
  }

  delete(key: string): void {
    const e = this.map.get(key);
    if (e) {
      this.total -= e.w;
      this.map.delete(key);
    }
  }

  clear(): void {
    this.map.clear();
    this.total = 0;
  }
}
