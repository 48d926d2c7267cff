/**
 * The fixed-newstyle handshake of one connection: client flags, then
 * options one at a time (LIST, INFO, GO, EXPORT_NAME, STRUCTURED_REPLY,
 * LIST/SET_META_CONTEXT, STARTTLS, ABORT), each answered before the next is
 * parsed. It ends by handing the negotiated Session to the connection,
 * which starts transmission.
 */
import * as P from './protocol';
import type { InputQueue } from './inbuf';
import type { NbdExport, OpenedExport } from './export';
import { ProtocolViolation, type ChosenContext, type Wire } from './wire';

/** The id of base:allocation; other contexts are numbered after it. */
export const META_CONTEXT_ID = 1;
/** Contexts one SET may select. */
const MAX_META_CONTEXTS = 64;
const MAX_NAME = 4096;
/**
 * During the handshake, no option is parsed while the client leaves more
 * than this of our replies unread (and the connection stops reading).
 */
export const HANDSHAKE_BUFFER_MAX = 256 * 1024;

export class Handshake {
  private flagsRead = false;
  private noZeroes = false;
  private structured = false;
  private metaExport: string | null = null;
  private metaSelected = false;
  /** Contexts the last SET selected; an extra context's handle is opened on the export in transmission at first use. */
  private metaChosen: ChosenContext[] = [];
  private optionBusy = false;
  private optionCount = 0;

  constructor(private readonly wire: Wire) {}

  /**
   * Parse what the input holds: the client flags, or one option (which is
   * then handled asynchronously; the wire resumes parsing when it is done).
   * Returns true when it consumed something and parsing may go on.
   */
  step(input: InputQueue): boolean {
    const w = this.wire;
    if (!this.flagsRead) {
      if (input.length < 4) return false;
      const flags = input.take(4).readUInt32BE(0);
      const known = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES;
      if (flags & ~known) throw new ProtocolViolation(`unknown client flags 0x${flags.toString(16)}`);
      this.noZeroes = (flags & P.FLAG_C_NO_ZEROES) !== 0;
      this.flagsRead = true;
      return true;
    }
    // One option at a time; none while the client leaves our replies unread.
    if (this.optionBusy || w.writableLength > HANDSHAKE_BUFFER_MAX) return false;
    if (input.length < 16) return false;
    const hdr = input.peek(16);
    if (hdr.readBigUInt64BE(0) !== P.IHAVEOPT) throw new ProtocolViolation('bad option magic');
    const opt = hdr.readUInt32BE(8);
    const len = hdr.readUInt32BE(12);
    if (len > w.hooks.limits.maxOptionLength) {
      input.take(16);
      this.optionReply(opt, P.REP_ERR_TOO_BIG, `option length ${len} exceeds limit`);
      throw new ProtocolViolation(`option ${opt} length ${len} over limit`);
    }
    if (input.length < 16 + len) return false;
    if (++this.optionCount > w.hooks.limits.maxOptions) {
      throw new ProtocolViolation(`${w.hooks.limits.maxOptions} options without choosing an export`);
    }
    input.take(16);
    const data = input.take(len);
    this.optionBusy = true;
    this.handleOption(opt, data).then(
      () => {
        this.optionBusy = false;
        w.resume();
      },
      (e) => {
        this.optionBusy = false;
        w.violation(e);
      },
    );
    return false;
  }

  private optionReply(opt: number, type: number, data?: Buffer | string): void {
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    const len = payload ? payload.length : 0;
    const b = Buffer.allocUnsafe(20 + len);
    b.writeBigUInt64BE(P.OPT_REPLY_MAGIC, 0);
    b.writeUInt32BE(opt, 8);
    b.writeUInt32BE(type >>> 0, 12);
    b.writeUInt32BE(len, 16);
    if (payload) payload.copy(b, 20);
    this.wire.send(b);
  }

  private async handleOption(opt: number, data: Buffer): Promise<void> {
    const tlsMode = this.wire.hooks.tls.mode;
    if (tlsMode === 'require' && !this.wire.info.tls && opt !== P.OPT_STARTTLS && opt !== P.OPT_ABORT) {
      if (opt === P.OPT_EXPORT_NAME) throw new ProtocolViolation('EXPORT_NAME before STARTTLS on a TLS-only server');
      this.optionReply(opt, P.REP_ERR_TLS_REQD, 'TLS is required: use STARTTLS');
      return;
    }
    switch (opt) {
      case P.OPT_EXPORT_NAME:
        return this.optExportName(data);
      case P.OPT_ABORT:
        this.optionReply(opt, P.REP_ACK);
        this.wire.abort();
        return;
      case P.OPT_LIST:
        return this.optList(data);
      case P.OPT_STARTTLS:
        return this.optStartTls(data);
      case P.OPT_INFO:
      case P.OPT_GO:
        return this.optInfoGo(opt, data);
      case P.OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.optionReply(opt, P.REP_ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        this.structured = true;
        return this.optionReply(opt, P.REP_ACK);
      case P.OPT_LIST_META_CONTEXT:
      case P.OPT_SET_META_CONTEXT:
        return this.optMetaContext(opt, data);
      default:
        return this.optionReply(opt, P.REP_ERR_UNSUP, `option ${opt} is not supported`);
    }
  }

  private async optList(data: Buffer): Promise<void> {
    if (data.length !== 0) return this.optionReply(P.OPT_LIST, P.REP_ERR_INVALID, 'LIST takes no data');
    const provider = this.wire.hooks.provider;
    const list = await provider.list(this.wire.info);
    for (const e of list) {
      if (provider.authorize && !(await this.authorized(e.name))) continue;
      const name = Buffer.from(e.name, 'utf8');
      const desc = Buffer.from(e.description ?? '', 'utf8');
      const b = Buffer.allocUnsafe(4 + name.length + desc.length);
      b.writeUInt32BE(name.length, 0);
      name.copy(b, 4);
      desc.copy(b, 4 + name.length);
      this.optionReply(P.OPT_LIST, P.REP_SERVER, b);
    }
    this.optionReply(P.OPT_LIST, P.REP_ACK);
  }

  private async optStartTls(data: Buffer): Promise<void> {
    const t = this.wire.hooks.tls;
    if (data.length !== 0) return this.optionReply(P.OPT_STARTTLS, P.REP_ERR_INVALID, 'STARTTLS takes no data');
    if (t.mode === 'off' || !t.credentials) {
      return this.optionReply(P.OPT_STARTTLS, P.REP_ERR_POLICY, 'TLS is not enabled on this server');
    }
    if (this.wire.info.tls) return this.optionReply(P.OPT_STARTTLS, P.REP_ERR_INVALID, 'TLS is already active');
    if (!this.wire.canStartTls) return this.optionReply(P.OPT_STARTTLS, P.REP_ERR_POLICY, 'TLS is not available on this transport');
    // The client must wait for our ACK before its TLS ClientHello: bytes
    // already here would be plaintext smuggled past the upgrade.
    if (this.wire.rx.queue.length > 0) throw new ProtocolViolation('data sent after STARTTLS before its reply');
    this.optionReply(P.OPT_STARTTLS, P.REP_ACK);
    // Any state negotiated before TLS is forgotten.
    this.structured = false;
    this.metaExport = null;
    this.metaSelected = false;
    this.metaChosen = [];
    const up = await this.wire.startTls();
    if (up) this.wire.log('debug', { cert: up.certSubject }, 'TLS established');
  }

  /** The provider's access decision for `name`; a failing check denies. */
  private async authorized(name: string): Promise<boolean> {
    const p = this.wire.hooks.provider;
    if (!p.authorize) return true;
    try {
      return (await p.authorize(name, this.wire.info)) === true;
    } catch (e) {
      this.wire.log('warn', { err: (e as Error).message, name }, 'access check failed; denying');
      return false;
    }
  }

  /** Opens `name` for this client: the export, null if there is none, or 'denied'. */
  private async openExport(name: string): Promise<OpenedExport | null | 'denied'> {
    if (!(await this.authorized(name))) {
      this.wire.log(
        'info',
        { name, remote: this.wire.info.remoteAddress, peer: this.wire.info.peer, cert: this.wire.info.certSubject },
        'access denied',
      );
      return 'denied';
    }
    try {
      return await this.wire.hooks.provider.open(name, this.wire.info);
    } catch (e) {
      this.wire.log('warn', { err: (e as Error).message, name }, 'export open failed');
      return null;
    }
  }

  private computeFlags(e: NbdExport): number {
    const c = e.capabilities;
    let f = P.FLAG_HAS_FLAGS;
    if (e.readOnly) f |= P.FLAG_READ_ONLY;
    else {
      if (c.flush) f |= P.FLAG_SEND_FLUSH;
      if (c.fua) f |= P.FLAG_SEND_FUA;
      if (c.trim) f |= P.FLAG_SEND_TRIM;
      f |= P.FLAG_SEND_WRITE_ZEROES; // emulated by writing zeroes when the export cannot
      if (c.zero && c.fastZero) f |= P.FLAG_SEND_FAST_ZERO;
    }
    if (this.structured) f |= P.FLAG_SEND_DF;
    if (c.multiConn) f |= P.FLAG_CAN_MULTI_CONN;
    if (c.cache) f |= P.FLAG_SEND_CACHE;
    return f;
  }

  private async optExportName(data: Buffer): Promise<void> {
    const name = data.toString('utf8');
    const opened = await this.openExport(name);
    if (opened === 'denied') throw new ProtocolViolation(`EXPORT_NAME for export ${JSON.stringify(name)}: access denied`);
    if (!opened) throw new ProtocolViolation(`EXPORT_NAME for unknown export ${JSON.stringify(name)}`);
    if (!this.wire.inHandshake) {
      await opened.export.close?.();
      return;
    }
    const flags = this.computeFlags(opened.export);
    const b = Buffer.alloc(this.noZeroes ? 10 : 134);
    b.writeBigUInt64BE(BigInt(opened.export.size), 0);
    b.writeUInt16BE(flags, 8);
    this.wire.send(b);
    this.enter(opened, flags);
  }

  private async optInfoGo(opt: number, data: Buffer): Promise<void> {
    if (data.length < 6) return this.optionReply(opt, P.REP_ERR_INVALID, 'option data too short');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 6) return this.optionReply(opt, P.REP_ERR_INVALID, 'name length overruns option');
    const name = data.toString('utf8', 4, 4 + nameLen);
    const nreq = data.readUInt16BE(4 + nameLen);
    if (data.length !== 6 + nameLen + 2 * nreq) {
      return this.optionReply(opt, P.REP_ERR_INVALID, 'information request count does not match length');
    }
    const requests = new Set<number>();
    for (let i = 0; i < nreq; i++) requests.add(data.readUInt16BE(6 + nameLen + 2 * i));

    const opened = await this.openExport(name);
    if (opened === 'denied') return this.optionReply(opt, P.REP_ERR_POLICY, `access to export ${JSON.stringify(name)} denied`);
    if (!opened) {
      return this.optionReply(opt, P.REP_ERR_UNKNOWN, `export ${JSON.stringify(name)} not found`);
    }
    if (!this.wire.inHandshake) {
      await opened.export.close?.();
      return;
    }
    const e = opened.export;
    const flags = this.computeFlags(e);
    const ex = Buffer.allocUnsafe(12);
    ex.writeUInt16BE(P.INFO_EXPORT, 0);
    ex.writeBigUInt64BE(BigInt(e.size), 2);
    ex.writeUInt16BE(flags, 10);
    this.optionReply(opt, P.REP_INFO, ex);
    if (requests.has(P.INFO_NAME) || opened.name !== name) {
      const n = Buffer.from(opened.name, 'utf8');
      const b = Buffer.allocUnsafe(2 + n.length);
      b.writeUInt16BE(P.INFO_NAME, 0);
      n.copy(b, 2);
      this.optionReply(opt, P.REP_INFO, b);
    }
    if (requests.has(P.INFO_DESCRIPTION) && opened.description) {
      const d = Buffer.from(opened.description, 'utf8');
      const b = Buffer.allocUnsafe(2 + d.length);
      b.writeUInt16BE(P.INFO_DESCRIPTION, 0);
      d.copy(b, 2);
      this.optionReply(opt, P.REP_INFO, b);
    }
    const bs = e.blockSize;
    const bsb = Buffer.allocUnsafe(14);
    bsb.writeUInt16BE(P.INFO_BLOCK_SIZE, 0);
    bsb.writeUInt32BE(bs?.minimum ?? P.DEFAULT_MIN_BLOCK, 2);
    bsb.writeUInt32BE(bs?.preferred ?? P.DEFAULT_PREFERRED_BLOCK, 6);
    bsb.writeUInt32BE(bs?.maximum ?? P.DEFAULT_MAX_PAYLOAD, 10);
    this.optionReply(opt, P.REP_INFO, bsb);
    this.optionReply(opt, P.REP_ACK);
    if (opt === P.OPT_GO) {
      this.enter(opened, flags);
    } else {
      await e.close?.();
    }
  }

  private async optMetaContext(opt: number, data: Buffer): Promise<void> {
    const set = opt === P.OPT_SET_META_CONTEXT;
    if (set) {
      // SET replaces the selection even when it fails.
      this.metaExport = null;
      this.metaSelected = false;
      this.metaChosen = [];
      if (!this.structured) {
        return this.optionReply(opt, P.REP_ERR_INVALID, 'negotiate STRUCTURED_REPLY first');
      }
    }
    // Parse: u32 name length, name, u32 query count, queries (u32 length, string).
    if (data.length < 8) return this.optionReply(opt, P.REP_ERR_INVALID, 'option data too short');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > MAX_NAME || 4 + nameLen + 4 > data.length) {
      return this.optionReply(opt, P.REP_ERR_INVALID, 'export name overruns option');
    }
    const name = data.toString('utf8', 4, 4 + nameLen);
    let pos = 4 + nameLen;
    const nq = data.readUInt32BE(pos);
    pos += 4;
    const queries: string[] = [];
    for (let i = 0; i < nq; i++) {
      if (pos + 4 > data.length) return this.optionReply(opt, P.REP_ERR_INVALID, 'query overruns option');
      const ql = data.readUInt32BE(pos);
      pos += 4;
      if (ql > data.length - pos) return this.optionReply(opt, P.REP_ERR_INVALID, 'query overruns option');
      queries.push(data.toString('utf8', pos, pos + ql));
      pos += ql;
    }
    if (pos !== data.length) return this.optionReply(opt, P.REP_ERR_INVALID, 'trailing bytes after queries');

    const opened = await this.openExport(name);
    if (opened === 'denied') return this.optionReply(opt, P.REP_ERR_POLICY, `access to export ${JSON.stringify(name)} denied`);
    if (!opened) return this.optionReply(opt, P.REP_ERR_UNKNOWN, `export ${JSON.stringify(name)} not found`);
    let names: string[];
    try {
      names = await this.matchMetaContexts(opened.export, queries, set);
    } catch (err) {
      this.wire.log('warn', { err: (err as Error)?.message }, 'meta context lookup failed');
      return this.optionReply(opt, P.REP_ERR_INVALID, (err as Error)?.message ?? 'meta context lookup failed');
    } finally {
      await opened.export.close?.();
    }
    if (set && names.length > MAX_META_CONTEXTS) return this.optionReply(opt, P.REP_ERR_TOO_BIG, `at most ${MAX_META_CONTEXTS} contexts`);
    // base:allocation keeps id 1; the others are numbered in order.
    let nextId = META_CONTEXT_ID + 1;
    const chosen = names.map((n) => ({ id: n === P.BASE_ALLOCATION ? META_CONTEXT_ID : nextId++, name: n }));
    for (const c of chosen) {
      const n = Buffer.from(c.name, 'utf8');
      const b = Buffer.allocUnsafe(4 + n.length);
      b.writeUInt32BE(set ? c.id : 0, 0);
      n.copy(b, 4);
      this.optionReply(opt, P.REP_META_CONTEXT, b);
    }
    if (set) {
      this.metaExport = name;
      this.metaSelected = chosen.length > 0;
      this.metaChosen = chosen;
    }
    this.optionReply(opt, P.REP_ACK);
  }

  /**
   * The context names a LIST (or SET) query set picks on an export, without
   * duplicates. LIST: no query lists everything; "ns:" (a leaf left empty) is
   * a prefix wildcard. SET: exact names only; "base:" and other wildcards
   * select nothing, unknown names are ignored (as the spec requires).
   */
  private async matchMetaContexts(e: NbdExport, queries: string[], set: boolean): Promise<string[]> {
    const extra = e.metaContexts;
    const out: string[] = [];
    const add = (n: string): void => {
      if (!out.includes(n)) out.push(n);
    };
    let listed: string[] | null = null;
    const listable = async (): Promise<string[]> => (listed ??= extra ? [...(await extra.list())] : []);
    if (queries.length === 0) {
      if (set) return out;
      add(P.BASE_ALLOCATION);
      for (const n of await listable()) add(n);
      return out;
    }
    for (const q of queries) {
      if (q === P.BASE_ALLOCATION) {
        add(q);
        continue;
      }
      if (q.endsWith(':')) {
        if (set) continue;
        if (P.BASE_ALLOCATION.startsWith(q)) add(P.BASE_ALLOCATION);
        for (const n of await listable()) if (n.startsWith(q)) add(n);
        continue;
      }
      if (extra && !q.startsWith('base:') && (await extra.open(q))) add(q);
    }
    return out;
  }

  private enter(opened: OpenedExport, flags: number): void {
    // Block status needs a context selected for this very export.
    if (this.metaExport !== null && this.metaExport !== opened.name && this.metaExport !== '') {
      this.metaSelected = false;
      this.metaChosen = [];
    }
    for (const c of this.metaChosen) delete c.ctx;
    this.wire.enterTransmission({
      opened,
      flags,
      structured: this.structured,
      metaSelected: this.metaSelected,
      metaChosen: this.metaChosen,
    });
  }
}
