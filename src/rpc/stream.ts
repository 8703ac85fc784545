/**
 * rpc/stream: a reply the server writes item by item instead of all at once.
 * A handler returns `new Streamed('jobs', items)`; the client receives the
 * same line as for `{ jobs: [...items] }` (plus `extra` fields), but the agent
 * never holds or serializes the whole reply in one go, and it pauses
 * producing items while the client is not reading.
 */
export class Streamed {
  constructor(
    readonly field: string,
    readonly items: AsyncIterable<unknown>,
    readonly extra: Record<string, unknown> = {},
  ) {}
}
