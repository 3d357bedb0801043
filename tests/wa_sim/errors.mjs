// The one error type of the simulator's control API: a code, an HTTP status, extra JSON fields.
export class SimError extends Error {
  constructor(code, message, status = 409, extra = {}) {
    super(message);
    this.code = code;
    this.status = status;
    this.extra = extra;
  }
}
