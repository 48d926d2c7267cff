/**
 * `rewind serve` options for TLS, limits, stdio mode and the configuration
 * file. Added to the serve command by buildProgram (main.ts).
 */
import { Option, type Command } from 'commander';
import { DEFAULT_LIMITS } from '../nbd';

export function addHardeningServeOptions(serve: Command): Command {
  const mib = (n: number) => `${Math.round(n / (1024 * 1024))}M`;
  return serve
    .addOption(
      new Option('--tls <mode>', 'NBD TLS: off, on (STARTTLS offered), require (nothing without TLS)').choices(['off', 'on', 'require']),
    )
    .option('--tls-dir <dir>', 'directory with server-cert.pem, server-key.pem and ca-cert.pem (default <data-dir>/tls)')
    .option('--tls-cert <file>', 'server certificate (PEM)')
    .option('--tls-key <file>', 'server private key (PEM)')
    .option('--tls-ca <file>', 'CA certificate (PEM) that client certificates must verify against')
    .option('--tls-verify-client', 'require a client certificate signed by the CA (subjects usable in volume ACLs)')
    .option('--max-connections <n>', `NBD connections served at once; more are closed at accept (default ${DEFAULT_LIMITS.maxConnections})`)
    .option(
      '--max-inflight <n>',
      `requests in flight per connection before reading pauses (default ${DEFAULT_LIMITS.maxInflightPerConnection})`,
    )
    .option(
      '--max-buffer <size>',
      `bytes of requests, results and unread replies buffered per connection before reading pauses (default ${mib(DEFAULT_LIMITS.maxBufferedBytesPerConnection)})`,
    )
    .option(
      '--memory-budget <size>',
      `bytes of requests, results, unread replies and idle buffers all NBD connections together hold before reading pauses (default ${mib(DEFAULT_LIMITS.memoryBudget)})`,
    )
    .option(
      '--handshake-timeout <seconds>',
      `time a client has to finish the NBD handshake, TLS included (default ${DEFAULT_LIMITS.handshakeTimeoutMs / 1000})`,
    )
    .option(
      '--write-stall-timeout <seconds>',
      `a client leaving replies unread over the buffer limit this long is disconnected (default ${DEFAULT_LIMITS.writeStallTimeoutMs / 1000})`,
    )
    .option('--config <file>', 'JSON configuration file: {"nbd": {"tls": ..., "tlsDir": ..., "maxConnections": ..., ...}}')
    .option('--stdio <export>', 'serve one NBD connection for EXPORT on stdin/stdout, then exit (as nbdkit -s)');
}
