/**
 * Errors a user can fix, raised anywhere below the daemon (volumes, time
 * travel, the manager, the link) and mapped by the HTTP layer onto statuses
 * (util/http.ts): invalid -> 400, not-found -> 404, conflict -> 409.
 * Anything else is a 500 and gets logged.
 */
export type UserErrorKind = 'invalid' | 'not-found' | 'conflict';

export class UserError extends Error {
  constructor(
    readonly kind: UserErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'UserError';
  }
}
