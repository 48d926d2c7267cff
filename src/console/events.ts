/**
 * Live updates for the console as server-sent events: every subscriber
 * gets the same LiveState, computed once per tick (every 2 s by default)
 * only while someone listens, so the cost does not grow with open tabs.
 * Bounded: at most `maxClients` streams (more get 503 from the route), and
 * a subscriber that does not read (over 1 MiB buffered) is dropped.
 *
 * The page reads the stream with fetch() rather than EventSource, because
 * EventSource cannot send the Authorization header the API requires.
 */
import type * as http from 'node:http';

const MAX_BUFFERED = 1 << 20;

export class EventHub {
  private readonly clients = new Set<http.ServerResponse>();
  private timer: NodeJS.Timeout | null = null;
  private ticking = false;
  private closed = false;

  constructor(
    private readonly state: () => Promise<unknown> | unknown,
    private readonly opts: { intervalMs?: number; maxClients?: number; onError?: (err: Error) => void } = {},
  ) {}

  get size(): number {
    return this.clients.size;
  }

  /** Starts an event stream on `res`; false if the hub is full or closed. */
  subscribe(res: http.ServerResponse): boolean {
    if (this.closed || this.clients.size >= (this.opts.maxClients ?? 16)) return false;
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      'X-Accel-Buffering': 'no',
    });
    res.write(`retry: ${this.opts.intervalMs ?? 2000}\n\n`);
    this.clients.add(res);
    res.on('close', () => {
      this.clients.delete(res);
      if (this.clients.size === 0) this.stopTimer();
    });
    void this.tick([res]);
    if (!this.timer) {
      this.timer = setInterval(() => void this.tick([...this.clients]), this.opts.intervalMs ?? 2000);
      this.timer.unref();
    }
    return true;
  }

  private async tick(to: http.ServerResponse[]): Promise<void> {
    if (this.ticking && to.length > 1) return;
    this.ticking = true;
    try {
      const data = JSON.stringify(await this.state());
      const frame = `event: state\ndata: ${data}\n\n`;
      for (const res of to) {
        if (res.destroyed || !this.clients.has(res)) continue;
        if (res.writableLength > MAX_BUFFERED) {
          res.destroy();
          continue;
        }
        res.write(frame);
      }
    } catch (err) {
      this.opts.onError?.(err as Error);
    } finally {
      this.ticking = false;
    }
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Ends every stream (shutdown). */
  close(): void {
    this.closed = true;
    this.stopTimer();
    for (const res of this.clients) res.end();
    this.clients.clear();
  }
}
