/**
 * rpc/version: the protocol version and line limit, in a module with no
 * dependencies, so that clients (the cgstep CLI starts ~40 ms faster) do not
 * load the schema library to learn them.
 */
export const PROTOCOL_VERSION = '1.0';
export const MAX_LINE_BYTES = 64 * 1024;
