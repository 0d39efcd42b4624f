/**
 * The shared integration-test harness: real components (registry, token server, Redis),
 * images built from scratch, a fault-injecting proxy, temp dirs and child processes.
 * See each module for contracts; everything listens on 127.0.0.1 only.
 */
export * from './fault-proxy.js';
export * from './images.js';
export * from './metrics.js';
export * from './process.js';
export * from './redis.js';
export * from './registry.js';
export * from './registry-http.js';
export * from './tmp.js';
export * from './token-server.js';
