/**
 * rpc: the control plane. Owns the socket, the protocol schema, peer
 * credentials and the client. Must not touch cgroups: requests are handed to
 * the agent's handler.
 */
export * from './protocol.js';
export * from './client.js';
export { RpcServer, type ServerOptions } from './server.js';
export { Streamed } from './stream.js';
export { roleOf, ucredOf, type Peer, type Role, type Ucred } from './peercred.js';
