/** Small TCP helpers: pick a free port, wait for a listener. */
import * as net from 'node:net';

/**
 * Ask the kernel for a currently unused TCP port on `host`. The port is free
 * when this returns but nothing reserves it, so a caller that races other
 * processes should retry on EADDRINUSE (startServer does).
 */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen({ host, port: 0, exclusive: true }, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close((err) => (err ? reject(err) : port ? resolve(port) : reject(new Error('no port assigned'))));
    });
  });
}

/** Try one TCP connection; resolves true if it was accepted. */
export function canConnect(port: number, host = '127.0.0.1', timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    let settled = false;
    const done = (ok: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

export interface WaitForPortOptions {
  host?: string;
  /** Give up after this long (default 15 s). */
  timeoutMs?: number;
  /** Delay between attempts (default 50 ms). */
  intervalMs?: number;
  /**
   * Checked before every attempt; if it returns a string (e.g. "server exited
   * with code 1") waiting stops with that as the error message.
   */
  abortIf?: () => string | null | undefined;
}

/** Resolve once something accepts TCP connections on host:port. */
export async function waitForPort(port: number, opts: WaitForPortOptions = {}): Promise<void> {
  const host = opts.host ?? '127.0.0.1';
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const intervalMs = opts.intervalMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reason = opts.abortIf?.();
    if (reason) throw new Error(reason);
    if (await canConnect(port, host, Math.min(1000, Math.max(100, deadline - Date.now())))) return;
    const reason2 = opts.abortIf?.();
    if (reason2) throw new Error(reason2);
    if (Date.now() >= deadline) {
      throw new Error(`nothing accepted connections on ${host}:${port} within ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
