#!/usr/bin/env node
// cocoon's local TVM: runs get-methods in @ton/sandbox's emulator (the one the devnet and the contract tests
// use) for cocoon.chain.local_tvm.NodeTvm, one JSON object per line on stdin and stdout.
//
// Request:  {"id": 1, "code": b64, "data": b64, "address": "0:…", "balance": "123", "config": b64,
//            "method": "get_owner" or 12345, "stack": b64 VmStack, "now": 1700000000,
//            "libs": b64 or null, "gas_limit": "1000000", "random_seed": 64 hex digits}
//           (BOCs base64; config: the masterchain config dictionary; method ids as TON derives them)
// Answer:   {"id": 1, "exit_code": 0, "gas_used": "1234", "stack": b64 VmStack, "missing_library": null}
//   or      {"id": 1, "error": "why"}                          (the process never exits on a bad request)
// {"id": 2, "op": "default_config"} answers {"id": 2, "config": b64}: the sandbox's own config (mainnet's).
'use strict';

const readline = require('node:readline');
const { Executor, defaultConfig } = require('@ton/sandbox');
const { Address, Cell, crc16, parseTuple } = require('@ton/core');

const DEFAULT_GAS_LIMIT = 1000000n;

// stdout carries answers only: anything the emulator logs goes to stderr.
const answer = (message) => process.stdout.write(JSON.stringify(message) + '\n');
console.log = console.info = console.debug = console.warn = console.error;

function methodId(method) {
  if (Number.isInteger(method)) return method;
  if (typeof method !== 'string' || method.length === 0) throw new Error('method must be a name or an integer id');
  return (crc16(Buffer.from(method)).readUInt16BE(0) & 0xffff) | 0x10000;
}

function cellField(request, name, { optional = false } = {}) {
  const value = request[name];
  if (value === undefined || value === null || value === '') {
    if (optional) return undefined;
    throw new Error(`${name} is missing`);
  }
  if (typeof value !== 'string') throw new Error(`${name} must be a base64 BOC`);
  try {
    return Cell.fromBase64(value);
  } catch (err) {
    throw new Error(`${name} is not a BOC: ${err.message}`);
  }
}

async function handle(executor, request) {
  if (request.op === 'default_config') return { config: defaultConfig };
  if (request.op !== undefined) throw new Error(`unknown op ${JSON.stringify(request.op)}`);
  // The config goes to the emulator as it came: parsing ~100 kB of it here would cost more than the run.
  if (typeof request.config !== 'string' || request.config.length === 0) throw new Error('config is missing');
  const stack = request.stack ? parseTuple(cellField(request, 'stack')) : [];
  const now = Number(request.now);
  if (!Number.isSafeInteger(now) || now < 0) throw new Error('now must be a unix time in seconds');
  const result = await executor.runGetMethod({
    code: cellField(request, 'code'),
    data: cellField(request, 'data'),
    libs: cellField(request, 'libs', { optional: true }),
    address: Address.parse(String(request.address)),
    balance: BigInt(request.balance ?? 0),
    config: request.config,
    methodId: methodId(request.method),
    stack,
    unixTime: now,
    randomSeed: Buffer.from(String(request.random_seed ?? '00'.repeat(32)), 'hex'),
    gasLimit: BigInt(request.gas_limit ?? DEFAULT_GAS_LIMIT),
    verbosity: 'short',
    debugEnabled: false,
  });
  const output = result.output;
  if (!output.success) throw new Error(`the emulator refused the request: ${output.error}`);
  return {
    exit_code: output.vm_exit_code,
    gas_used: String(output.gas_used),
    stack: output.stack,
    missing_library: output.missing_library,
  };
}

async function main() {
  const executor = Executor.create();
  executor.catch(() => {}); // each request reports the failure; an unhandled rejection must not kill us
  let queue = Promise.resolve(); // one request at a time, answered in order
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    queue = queue.then(async () => {
      let id = null;
      try {
        const request = JSON.parse(line);
        if (request === null || typeof request !== 'object') throw new Error('a request is a JSON object');
        id = request.id ?? null;
        answer({ id, ...(await handle(await executor, request)) });
      } catch (err) {
        answer({ id, error: String(err && err.message ? err.message : err) });
      }
    });
  });
  // At the end of stdin node exits by itself once the queue drains and stdout is flushed.
}

main();
