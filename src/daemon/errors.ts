/**
 * Errors a user can fix, raised by the daemon's volume operations and mapped
 * by the control API onto HTTP statuses: invalid -> 400, not-found -> 404,
 * conflict -> 409. Anything else is a 500 and gets logged.
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

export function httpStatusOf(err: UserError): number {
  switch (err.kind) {
    case 'invalid':
      return 400;
    case 'not-found':
      return 404;
    case 'conflict':
      return 409;
  }
}
