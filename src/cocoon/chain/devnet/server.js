#!/usr/bin/env node
// cocoon devnet: an @ton/sandbox Blockchain behind the subset of the toncenter v2 HTTP API that cocoon's
// Python chain client uses, plus a few devnet-only endpoints (fund, advance_time, faults, status).
// Usage: node server.js [--port 8790] [--host 127.0.0.1] [--state devnet-state.json] [--global-id N]
//        [--toncenter] [--read-cache-ms N] [--inclusion-delay-ms N] [--drop-rate P] [--fault-rate P] [--seed S]
//        [--keyless-rps R] [--key-rps R]
// With no toncenter-mode flag every message applies at once and nothing ever fails; see "real-toncenter mode".
'use strict';

const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const { performance } = require('node:perf_hooks');
const { Blockchain, snapshotToSerializable, snapshotFromSerializable, GetMethodError } = require('@ton/sandbox');
const { Address, Cell, Dictionary, beginCell, loadMessage, storeMessage, storeTransaction, storeStateInit } = require('@ton/core');

const WALLET_V4R2_CODE_HASH = 'feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0';
const MAX_BODY_BYTES = 4 * 1024 * 1024;
const SAVE_EVERY_MS = 5000;
const MAX_TRANSACTIONS_LIMIT = 100;

const USAGE =
  'usage: server.js [--port N] [--host H] [--state FILE] [--global-id N] [--toncenter] [--read-cache-ms N] ' +
  '[--inclusion-delay-ms N] [--drop-rate P] [--fault-rate P] [--seed S] [--keyless-rps R] [--key-rps R]';

// What `--toncenter` turns on: toncenter.com in front of a real network, as a keyless or keyed client sees it.
const TONCENTER_PROFILE = { readCacheMs: 1000, inclusionDelayMs: 1000, keylessRps: 1, keyRps: 10 };

function parseArgs(argv) {
  const opts = {
    port: Number(process.env.COCOON_DEVNET_PORT || 8790),
    host: process.env.COCOON_DEVNET_HOST || '127.0.0.1',
    state: process.env.COCOON_DEVNET_STATE || null,
    globalId: null,
  };
  const mode = {};
  let profile = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--port') opts.port = Number(next());
    else if (arg === '--host') opts.host = next();
    else if (arg === '--state') opts.state = next();
    else if (arg === '--global-id') opts.globalId = int32(next(), '--global-id');
    else if (arg === '--toncenter') profile = true;
    else if (arg === '--read-cache-ms') mode.readCacheMs = nonNegative(next(), arg);
    else if (arg === '--inclusion-delay-ms') mode.inclusionDelayMs = nonNegative(next(), arg);
    else if (arg === '--drop-rate') mode.dropRate = probability(next(), arg);
    else if (arg === '--fault-rate') mode.faultRate = probability(next(), arg);
    else if (arg === '--seed') mode.seed = int32(next(), arg);
    else if (arg === '--keyless-rps') mode.keylessRps = nonNegative(next(), arg);
    else if (arg === '--key-rps') mode.keyRps = nonNegative(next(), arg);
    else throw new Error(`unknown argument ${arg}; ${USAGE}`);
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new Error('--port must be 0..65535');
  opts.mode = profile ? { ...TONCENTER_PROFILE, ...mode } : mode;
  return opts;
}

function nonNegative(value, name) {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, not ${JSON.stringify(value)}`);
  return n;
}

function probability(value, name) {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > 1) throw new Error(`${name} must be a probability in 0..1, not ${JSON.stringify(value)}`);
  return n;
}

function int32(value, name) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < -(2 ** 31) || n >= 2 ** 31) throw new Error(`${name} must be a 32-bit integer, not ${JSON.stringify(value)}`);
  return n;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---------------------------------------------------------------- real-toncenter mode
// toncenter in front of a real network is slow (a message lands in a block seconds after sendBoc answered ok),
// forgetful (an accepted message may never land), caches identical reads for a second, rate-limits (1 request/s
// without a key) and sometimes fails. Each knob below brings one of those back, independently of the others;
// with none set the devnet answers instantly and never fails, which is what `cocoon up` wants.

// Faults drawn by --fault-rate, with texts as toncenter words them. A 429 carries its text in `result`.
const RANDOM_FAULTS = [500, 542, 504, 429];
const FAULT_TEXTS = {
  500: 'LITE_SERVER_UNKNOWN: block is not applied',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'LITE_SERVER_NETWORK: timeout',
  542: 'LITE_SERVER_NOTREADY: block is not ready',
};

function toncenterError(status, text) {
  if (status === 429) return { ok: false, result: 'Ratelimit exceed', code: 429 };
  return { ok: false, error: text ?? FAULT_TEXTS[status] ?? `HTTP ${status}`, code: status };
}

// mulberry32: a tiny seeded PRNG, so a run that failed under --fault-rate or --drop-rate replays with its --seed.
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// `rate` requests a second, bursts of up to `rate` (at least one) after a quiet spell.
class TokenBucket {
  constructor(rate) {
    this.rate = rate;
    this.capacity = Math.max(1, rate);
    this.tokens = this.capacity;
    this.at = performance.now();
  }

  take() {
    const now = performance.now();
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

// The settings `POST /devnet/faults` takes, with the check each value must pass.
const FAULT_SETTINGS = {
  read_cache_ms: ['readCacheMs', nonNegative],
  inclusion_delay_ms: ['inclusionDelayMs', nonNegative],
  drop_rate: ['dropRate', probability],
  fault_rate: ['faultRate', probability],
  keyless_rps: ['keylessRps', nonNegative],
  key_rps: ['keyRps', nonNegative],
  seed: ['seed', int32],
};

class ToncenterMode {
  constructor(settings) {
    this.readCacheMs = 0;
    this.inclusionDelayMs = 0;
    this.dropRate = 0;
    this.faultRate = 0;
    this.keylessRps = 0;
    this.keyRps = 0;
    this.seed = 1;
    Object.assign(this, settings);
    this.random = mulberry32(this.seed);
    this.dropNext = 0;
    this.failNext = [];
    this.cache = new Map(); // request key -> { expires, text }
    this.keylessBucket = null;
    this.keyBuckets = new Map(); // api key -> TokenBucket
    this.counters = {
      cache_hits: 0,
      messages_delayed: 0,
      messages_dropped: 0,
      messages_lost: 0,
      duplicates: 0,
      faults_injected: 0,
      rate_limited: 0,
    };
  }

  // Whether an accepted message may be held back or dropped, which needs the acceptance check on a snapshot.
  get holdsMessages() {
    return this.inclusionDelayMs > 0 || this.dropRate > 0 || this.dropNext > 0;
  }

  // Applies `POST /devnet/faults`: each field given replaces its setting; 0 turns a knob off.
  configure(body) {
    for (const [key, value] of Object.entries(body)) {
      if (key === 'drop_next') {
        if (!Number.isInteger(value) || value < 0) throw new ApiError(400, 'drop_next must be a non-negative integer');
        this.dropNext = value;
      } else if (key === 'fail_next') {
        if (!Array.isArray(value) || !value.every((s) => Number.isInteger(s) && s >= 400 && s <= 599)) {
          throw new ApiError(400, 'fail_next must be a list of HTTP error statuses (400..599)');
        }
        this.failNext = [...value];
      } else if (key in FAULT_SETTINGS) {
        const [field, check] = FAULT_SETTINGS[key];
        try {
          this[field] = check(value, key);
        } catch (err) {
          throw new ApiError(400, err.message);
        }
      } else {
        throw new ApiError(400, `unknown fault setting ${JSON.stringify(key)}; known: drop_next, fail_next, ${Object.keys(FAULT_SETTINGS).join(', ')}`);
      }
    }
    if ('seed' in body) this.random = mulberry32(this.seed);
    if ('read_cache_ms' in body) this.cache.clear();
    if ('keyless_rps' in body) this.keylessBucket = null;
    if ('key_rps' in body) this.keyBuckets.clear();
  }

  // The answer an API request gets before it reaches the chain (so it has no effect), or null to let it through.
  // An explicit fail_next comes first, then the rate limits a gateway applies, then random liteserver faults.
  refusal(req, url) {
    if (this.failNext.length > 0) {
      this.counters.faults_injected += 1;
      return this.failNext.shift();
    }
    if (!this.admit(req.headers['x-api-key'] || url.searchParams.get('api_key'))) {
      this.counters.rate_limited += 1;
      return 429;
    }
    if (this.faultRate > 0 && this.random() < this.faultRate) {
      this.counters.faults_injected += 1;
      return RANDOM_FAULTS[Math.floor(this.random() * RANDOM_FAULTS.length)];
    }
    return null;
  }

  admit(apiKey) {
    if (apiKey) {
      if (this.keyRps <= 0) return true;
      if (!this.keyBuckets.has(apiKey)) this.keyBuckets.set(apiKey, new TokenBucket(this.keyRps));
      return this.keyBuckets.get(apiKey).take();
    }
    if (this.keylessRps <= 0) return true;
    this.keylessBucket ??= new TokenBucket(this.keylessRps);
    return this.keylessBucket.take();
  }

  // Reads toncenter caches: every GET, and runGetMethod by its body. Never a send, never a devnet endpoint.
  cacheKey(method, url, raw) {
    if (this.readCacheMs <= 0 || !url.pathname.startsWith('/api/v2/')) return null;
    if (method === 'GET') return `GET ${url.pathname}${url.search}`;
    if (method === 'POST' && url.pathname === '/api/v2/runGetMethod') return `POST ${url.pathname} ${raw}`;
    return null;
  }

  cached(key) {
    const entry = this.cache.get(key);
    if (!entry) return null;
    if (entry.expires <= performance.now()) {
      this.cache.delete(key);
      return null;
    }
    this.counters.cache_hits += 1;
    return entry.text;
  }

  remember(key, text) {
    const now = performance.now();
    if (this.cache.size >= 10000) for (const [k, e] of this.cache) if (e.expires <= now) this.cache.delete(k);
    this.cache.set(key, { expires: now + this.readCacheMs, text });
  }

  // Whether the next accepted message is lost: drop_next first, then --drop-rate.
  drops() {
    if (this.dropNext > 0) {
      this.dropNext -= 1;
      return true;
    }
    return this.dropRate > 0 && this.random() < this.dropRate;
  }

  toJSON() {
    return {
      read_cache_ms: this.readCacheMs,
      inclusion_delay_ms: this.inclusionDelayMs,
      drop_rate: this.dropRate,
      fault_rate: this.faultRate,
      keyless_rps: this.keylessRps,
      key_rps: this.keyRps,
      seed: this.seed,
      drop_next: this.dropNext,
      fail_next: this.failNext,
      counters: this.counters,
    };
  }
}

// ---------------------------------------------------------------- chain state

class Devnet {
  constructor(blockchain, treasury, saved, mode) {
    this.bc = blockchain;
    this.mode = mode;
    this.pending = []; // accepted messages waiting for their inclusion delay, oldest first: { key, msg, due }
    this.pendingKeys = new Set();
    this.pendingTimer = null;
    this.treasury = treasury;
    this.timeOffset = saved?.timeOffset ?? 0;
    this.opCounts = saved?.opCounts ?? {};
    this.lastNow = saved?.lastNow ?? 0;
    this.dirty = false;
    this.queue = Promise.resolve();
  }

  static async create(statePath, { globalId = null, mode = {} } = {}) {
    const bc = await Blockchain.create();
    bc.verbosity = { print: false, blockchainLogs: false, vmLogs: 'none', debugLogs: false };
    let saved = null;
    if (statePath && fs.existsSync(statePath)) {
      saved = JSON.parse(fs.readFileSync(statePath, 'utf8'));
      await bc.loadFrom(snapshotFromSerializable(saved.snapshot));
    }
    // The snapshot carries the config, so a global id set once survives restarts with --state.
    if (globalId !== null) bc.setConfig(withGlobalId(bc.config, globalId));
    const devnet = new Devnet(bc, null, saved, new ToncenterMode(mode));
    devnet.tick();
    devnet.treasury = await bc.treasury('cocoon-devnet');
    return devnet;
  }

  // Every chain operation runs one at a time, in arrival order: sandbox state is not safe to interleave.
  serial(fn) {
    const result = this.queue.then(fn);
    this.queue = result.catch(() => undefined);
    return result;
  }

  now() {
    return Math.floor(Date.now() / 1000) + this.timeOffset;
  }

  // Sandbox refuses to run a contract at a time before its last transaction, so `now` never goes back.
  tick() {
    this.lastNow = Math.max(this.lastNow, this.now());
    this.bc.now = this.lastNow;
    return this.lastNow;
  }

  record(transactions) {
    for (const tx of transactions) {
      const msg = tx.inMessage;
      if (!msg) continue;
      const dest = msg.info.dest;
      if (!Address.isAddress(dest)) continue;
      const key = dest.toRawString();
      let op = 'external';
      if (msg.info.type === 'internal') {
        const body = msg.body.beginParse();
        op = body.remainingBits >= 32 ? '0x' + body.loadUint(32).toString(16).padStart(8, '0') : 'empty';
      }
      const counts = (this.opCounts[key] ??= {});
      counts[op] = (counts[op] ?? 0) + 1;
    }
    this.dirty = true;
  }

  async sendExternal(bocBase64) {
    let cell;
    try {
      cell = Cell.fromBase64(bocBase64);
    } catch (err) {
      throw new ApiError(400, `boc is not a valid base64 bag of cells: ${err.message}`);
    }
    const msg = loadMessage(cell.beginParse());
    if (msg.info.type !== 'external-in') throw new ApiError(400, 'sendBoc takes external-in messages only');
    if (!this.mode.holdsMessages) {
      this.tick();
      this.record((await this.applyExternal(msg)).transactions);
      return cell.hash();
    }
    const key = cell.hash().toString('hex');
    if (this.pendingKeys.has(key)) {
      // A node keeps one copy of a message in its queue however often it is sent.
      this.mode.counters.duplicates += 1;
      return cell.hash();
    }
    await this.checkAcceptance(msg);
    if (this.mode.drops()) {
      this.mode.counters.messages_dropped += 1;
    } else if (this.mode.inclusionDelayMs > 0) {
      this.mode.counters.messages_delayed += 1;
      this.pending.push({ key, msg, due: performance.now() + this.mode.inclusionDelayMs });
      this.pendingKeys.add(key);
      this.scheduleInclusion();
    } else {
      this.tick();
      this.record((await this.applyExternal(msg)).transactions);
    }
    return cell.hash();
  }

  async applyExternal(msg) {
    try {
      return await this.bc.sendMessage(msg);
    } catch (err) {
      throw new ApiError(500, `LITE_SERVER_UNKNOWN: cannot apply external message to current state: ${err.message}`);
    }
  }

  // What a liteserver does before it answers sendBoc: run the external message against the current state and
  // refuse it if the account would not accept it. Only its first transaction runs, on a snapshot put back after.
  async checkAcceptance(msg) {
    this.tick();
    const snapshot = this.bc.snapshot();
    try {
      const transactions = await this.bc.sendMessageIter(msg, { allowParallel: true });
      await transactions.next();
    } catch (err) {
      throw new ApiError(500, `LITE_SERVER_UNKNOWN: cannot apply external message to current state: ${err.message}`);
    } finally {
      await this.bc.loadFrom(snapshot);
    }
  }

  // One timer for the oldest waiting message; messages land in the order they were accepted.
  scheduleInclusion() {
    if (this.pendingTimer !== null || this.pending.length === 0) return;
    const wait = Math.max(0, this.pending[0].due - performance.now());
    this.pendingTimer = setTimeout(() => {
      this.pendingTimer = null;
      const now = performance.now();
      while (this.pending.length > 0 && this.pending[0].due <= now) {
        const item = this.pending.shift();
        void this.serial(() => this.include(item));
      }
      this.scheduleInclusion();
    }, wait);
  }

  async include({ key, msg }) {
    this.pendingKeys.delete(key);
    this.tick();
    try {
      this.record((await this.bc.sendMessage(msg)).transactions);
    } catch (err) {
      // The state moved on since it was accepted (its seqno was used, it expired): on a real chain it is lost.
      this.mode.counters.messages_lost += 1;
      process.stderr.write(`devnet: an accepted message ${key} no longer applies and is lost: ${err.message}\n`);
    }
  }

  async fund(address, amount) {
    this.tick();
    const result = await this.treasury.send({ to: address, value: amount, bounce: false });
    this.record(result.transactions);
    const contract = await this.bc.getContract(address);
    return contract.balance;
  }

  transactionsOf(address) {
    // bc.getTransactions() reverses its internal list in place; read the list ourselves instead.
    return this.bc.transactions
      .filter((tx) => {
        const dest = tx.inMessage?.info?.dest;
        return Address.isAddress(dest) && dest.equals(address);
      })
      .sort((a, b) => (a.lt < b.lt ? 1 : a.lt > b.lt ? -1 : 0));
  }

  save(statePath) {
    if (!statePath || !this.dirty) return;
    const payload = {
      version: 1,
      timeOffset: this.timeOffset,
      lastNow: this.lastNow,
      opCounts: this.opCounts,
      snapshot: snapshotToSerializable(this.bc.snapshot()),
    };
    const tmp = `${statePath}.${process.pid}.tmp`;
    fs.mkdirSync(path.dirname(path.resolve(statePath)), { recursive: true });
    fs.writeFileSync(tmp, JSON.stringify(payload));
    fs.renameSync(tmp, statePath);
    this.dirty = false;
  }
}

// The chain's config with param 19, the global id (`_ global_id:int32 = ConfigParam 19`), set to `globalId`.
function withGlobalId(config, globalId) {
  const params = Dictionary.loadDirect(Dictionary.Keys.Int(32), Dictionary.Values.Cell(), config);
  params.set(19, beginCell().storeInt(globalId, 32).endCell());
  return beginCell().storeDictDirect(params).endCell();
}

// ---------------------------------------------------------------- toncenter JSON shapes

function parseAddress(raw) {
  if (typeof raw !== 'string' || raw.length === 0) throw new ApiError(400, 'address is required');
  try {
    return Address.parse(raw);
  } catch (err) {
    throw new ApiError(400, `invalid address ${JSON.stringify(raw)}: ${err.message}`);
  }
}

function hashBase64(bigintHash) {
  return Buffer.from(bigintHash.toString(16).padStart(64, '0'), 'hex').toString('base64');
}

function transactionId(lt, hashB64) {
  return { '@type': 'internal.transactionId', lt: lt.toString(), hash: hashB64 };
}

function intToToncenter(value) {
  return value < 0n ? '-0x' + (-value).toString(16) : '0x' + value.toString(16);
}

// toncenter's JSON rendering of a cell beside its BOC (tvm_valuetypes' Cell.serialize_to_object).
function cellObject(cell) {
  const bytes = Buffer.alloc(Math.ceil(cell.bits.length / 8));
  for (let i = 0; i < cell.bits.length; i++) if (cell.bits.at(i)) bytes[i >> 3] |= 0x80 >> (i & 7);
  return { data: { b64: bytes.toString('base64'), len: cell.bits.length }, refs: cell.refs.map(cellObject), special: cell.isExotic };
}

function cellToToncenter(cell) {
  return ['cell', { bytes: cell.toBoc().toString('base64'), object: cellObject(cell) }];
}

// Shapes as both toncenter servers render tonlib's stack (tvm_valuetypes.serialize_tvm_element): a slice comes
// back as "cell", exactly like a cell, and a null as an empty list (tonlib has no null entry; @ton/ton's TonClient
// reads an empty list as null for this reason).
function stackEntryToToncenter(item) {
  switch (item.type) {
    case 'int':
      return ['num', intToToncenter(item.value)];
    case 'nan':
      return ['num', 'NaN'];
    case 'null':
      return ['list', { '@type': 'tvm.list', elements: [] }];
    case 'cell':
    case 'slice':
      return cellToToncenter(item.cell);
    case 'builder':
      return ['builder', { bytes: item.cell.toBoc().toString('base64') }];
    case 'tuple':
      return ['tuple', { '@type': 'tvm.tuple', elements: item.items.map(tupleElementToToncenter) }];
    default:
      throw new ApiError(500, `cannot encode stack item of type ${item.type}`);
  }
}

// Inside tuples toncenter switches to tonlib's typed objects.
function tupleElementToToncenter(item) {
  switch (item.type) {
    case 'int':
      return { '@type': 'tvm.stackEntryNumber', number: { '@type': 'tvm.numberDecimal', number: item.value.toString() } };
    case 'cell':
      return { '@type': 'tvm.stackEntryCell', cell: { '@type': 'tvm.cell', bytes: item.cell.toBoc().toString('base64') } };
    case 'slice':
      return { '@type': 'tvm.stackEntrySlice', slice: { '@type': 'tvm.slice', bytes: item.cell.toBoc().toString('base64') } };
    case 'tuple':
      return { '@type': 'tvm.stackEntryTuple', tuple: { '@type': 'tvm.tuple', elements: item.items.map(tupleElementToToncenter) } };
    case 'null':
      return { '@type': 'tvm.stackEntryList', list: { '@type': 'tvm.list', elements: [] } };
    default:
      return { '@type': 'tvm.stackEntryUnsupported' };
  }
}

function stackEntryFromToncenter(entry) {
  if (!Array.isArray(entry) || entry.length !== 2) throw new ApiError(400, 'stack entries are [type, value] pairs');
  const [type, value] = entry;
  switch (type) {
    case 'num':
    case 'int': {
      const text = String(value);
      const negative = text.startsWith('-');
      const magnitude = BigInt(negative ? text.slice(1) : text);
      return { type: 'int', value: negative ? -magnitude : magnitude };
    }
    case 'tvm.Cell':
    case 'cell':
      return { type: 'cell', cell: Cell.fromBase64(value) };
    case 'tvm.Slice':
    case 'slice':
      return { type: 'slice', cell: Cell.fromBase64(value) };
    case 'tvm.Builder':
    case 'builder':
      // toncenter has no way to pass a builder to tonlib and refuses it (issue 13: 503 / 542); so do we.
      throw new ApiError(542, `stack entry type ${JSON.stringify(type)} is not supported; pass a tvm.Slice`);
    default:
      throw new ApiError(400, `unsupported stack entry type ${JSON.stringify(type)}`);
  }
}

function addressText(addr) {
  return Address.isAddress(addr) ? addr.toString() : '';
}

function messageToToncenter(msg) {
  const info = msg.info;
  const body = msg.body ?? beginCell().endCell();
  return {
    '@type': 'raw.message',
    hash: beginCell().store(storeMessage(msg)).endCell().hash().toString('base64'),
    source: info.type === 'external-in' ? '' : addressText(info.src),
    destination: info.type === 'external-out' ? '' : addressText(info.dest),
    value: info.type === 'internal' ? info.value.coins.toString() : '0',
    extra_currencies: [],
    fwd_fee: info.type === 'internal' ? info.forwardFee.toString() : '0',
    ihr_fee: info.type === 'internal' ? info.ihrFee.toString() : '0',
    created_lt: info.type === 'external-in' ? '0' : info.createdLt.toString(),
    body_hash: body.hash().toString('base64'),
    msg_data: {
      '@type': 'msg.dataRaw',
      body: body.toBoc().toString('base64'),
      init_state: msg.init ? beginCell().store(storeStateInit(msg.init)).endCell().toBoc().toString('base64') : '',
    },
    message: '',
  };
}

function transactionToToncenter(tx, address) {
  const storageFee = tx.description.type === 'generic' ? (tx.description.storagePhase?.storageFeesCollected ?? 0n) : 0n;
  const fee = tx.totalFees.coins;
  const hash = tx.hash().toString('base64');
  return {
    '@type': 'raw.transaction',
    address: { '@type': 'accountAddress', account_address: address.toString() },
    utime: tx.now,
    data: beginCell().store(storeTransaction(tx)).endCell().toBoc().toString('base64'),
    transaction_id: transactionId(tx.lt, hash),
    fee: fee.toString(),
    storage_fee: storageFee.toString(),
    other_fee: (fee - storageFee).toString(),
    in_msg: tx.inMessage ? messageToToncenter(tx.inMessage) : null,
    out_msgs: [...tx.outMessages.values()].map(messageToToncenter),
  };
}

async function accountState(devnet, address) {
  const contract = await devnet.bc.getContract(address);
  const state = contract.accountState;
  const lastLt = contract.lastTransactionLt;
  return {
    contract,
    type: state?.type === 'active' ? 'active' : state?.type === 'frozen' ? 'frozen' : 'uninitialized',
    code: state?.type === 'active' ? state.state.code ?? null : null,
    data: state?.type === 'active' ? state.state.data ?? null : null,
    lastTransactionId: transactionId(lastLt, lastLt === 0n ? 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=' : hashBase64(contract.lastTransactionHash)),
  };
}

// ---------------------------------------------------------------- handlers

const handlers = {
  async 'POST /api/v2/sendBoc'(devnet, body) {
    await devnet.sendExternal(requireString(body, 'boc'));
    return { '@type': 'ok', '@extra': 'devnet' };
  },

  async 'POST /api/v2/sendBocReturnHash'(devnet, body) {
    const hash = await devnet.sendExternal(requireString(body, 'boc'));
    return { '@type': 'raw.extMessageInfo', hash: hash.toString('base64') };
  },

  async 'POST /api/v2/runGetMethod'(devnet, body) {
    const address = parseAddress(body.address);
    const method = body.method;
    if (typeof method !== 'string' && typeof method !== 'number') throw new ApiError(400, 'method is required');
    const stack = (body.stack ?? []).map(stackEntryFromToncenter);
    const { contract, type, lastTransactionId } = await accountState(devnet, address);
    const base = { '@type': 'smc.runResult', last_transaction_id: lastTransactionId, '@extra': 'devnet' };
    if (type !== 'active') return { ...base, gas_used: 0, stack: [], exit_code: -13 };
    try {
      const res = await contract.get(method, stack, { now: devnet.tick() });
      return { ...base, gas_used: Number(res.gasUsed), stack: res.stack.map(stackEntryToToncenter), exit_code: res.exitCode };
    } catch (err) {
      if (err instanceof GetMethodError) return { ...base, gas_used: Number(err.gasUsed), stack: [], exit_code: err.exitCode };
      throw err;
    }
  },

  async 'GET /api/v2/getAddressInformation'(devnet, _body, query) {
    const { contract, type, code, data, lastTransactionId } = await accountState(devnet, parseAddress(query.get('address')));
    return {
      '@type': 'raw.fullAccountState',
      balance: contract.balance.toString(),
      extra_currencies: [],
      code: code ? code.toBoc().toString('base64') : '',
      data: data ? data.toBoc().toString('base64') : '',
      last_transaction_id: lastTransactionId,
      frozen_hash: '',
      sync_utime: devnet.now(),
      state: type,
      '@extra': 'devnet',
    };
  },

  // The sandbox's own config (mainnet's by default: param 19, the global id, is -239), as toncenter shapes it.
  async 'GET /api/v2/getConfigParam'(devnet, _body, query) {
    const id = Number(query.get('config_id'));
    if (!Number.isInteger(id) || id < 0) throw new ApiError(400, 'config_id must be a non-negative integer');
    const params = Dictionary.loadDirect(Dictionary.Keys.Int(32), Dictionary.Values.Cell(), devnet.bc.config);
    const param = params.get(id);
    if (!param) throw new ApiError(404, `config param ${id} is not set`);
    return { '@type': 'configInfo', config: { '@type': 'tvm.cell', bytes: param.toBoc().toString('base64') }, '@extra': 'devnet' };
  },

  async 'GET /api/v2/getWalletInformation'(devnet, _body, query) {
    const { contract, type, code, data, lastTransactionId } = await accountState(devnet, parseAddress(query.get('address')));
    const result = {
      wallet: false,
      balance: contract.balance.toString(),
      extra_currencies: [],
      account_state: type,
      last_transaction_id: lastTransactionId,
    };
    if (type === 'active' && code && data && code.hash().toString('hex') === WALLET_V4R2_CODE_HASH) {
      const slice = data.beginParse();
      result.wallet = true;
      result.wallet_type = 'wallet v4 r2';
      result.seqno = slice.loadUint(32);
      result.wallet_id = slice.loadUint(32);
    }
    return result;
  },

  async 'GET /api/v2/getTransactions'(devnet, _body, query) {
    const address = parseAddress(query.get('address'));
    const limit = Number(query.get('limit') ?? 10);
    // Both toncenter servers refuse more than 100 per page (the Python one declares `limit: le=100`).
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_TRANSACTIONS_LIMIT) {
      throw new ApiError(422, `limit must be an integer from 1 to ${MAX_TRANSACTIONS_LIMIT}, not ${query.get('limit')}; page with lt and hash`);
    }
    // A start point is one transaction's id, lt and hash together: toncenter.com answers 422 to a lone lt.
    if (Boolean(query.get('lt')) !== Boolean(query.get('hash'))) {
      throw new ApiError(422, 'lt and hash must be given together (one transaction id), or neither');
    }
    const fromLt = query.get('lt') ? BigInt(query.get('lt')) : null;
    const toLt = query.get('to_lt') ? BigInt(query.get('to_lt')) : 0n;
    const txs = devnet
      .transactionsOf(address)
      .filter((tx) => (fromLt === null || tx.lt <= fromLt) && tx.lt > toLt)
      .slice(0, limit);
    return txs.map((tx) => transactionToToncenter(tx, address));
  },

  async 'POST /devnet/fund'(devnet, body) {
    const address = parseAddress(body.address);
    const amount = BigInt(body.amount ?? 0);
    if (amount <= 0n) throw new ApiError(400, 'amount must be a positive number of nanoton');
    const balance = await devnet.fund(address, amount);
    return { address: address.toString(), amount: amount.toString(), balance: balance.toString() };
  },

  async 'POST /devnet/advance_time'(devnet, body) {
    const seconds = Number(body.seconds);
    if (!Number.isInteger(seconds) || seconds < 0) throw new ApiError(400, 'seconds must be a non-negative integer');
    devnet.timeOffset += seconds;
    devnet.dirty = true;
    return { now: devnet.tick(), offset: devnet.timeOffset };
  },

  async 'GET /devnet/status'(devnet) {
    return {
      ready: true,
      now: devnet.tick(),
      time_offset: devnet.timeOffset,
      transactions: devnet.bc.transactions.length,
      treasury: devnet.treasury.address.toString(),
      ops: devnet.opCounts,
      toncenter_mode: { ...devnet.mode.toJSON(), pending_messages: devnet.pending.length },
    };
  },

  // Turns real-toncenter knobs at runtime; answers the mode as /devnet/status reports it.
  async 'POST /devnet/faults'(devnet, body) {
    devnet.mode.configure(body);
    return { ...devnet.mode.toJSON(), pending_messages: devnet.pending.length };
  },
};

function requireString(body, key) {
  const value = body[key];
  if (typeof value !== 'string' || value.length === 0) throw new ApiError(400, `${key} is required`);
  return value;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new ApiError(413, 'request body too large'));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function toJson(payload) {
  return JSON.stringify(payload, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
}

function reply(res, status, payload) {
  replyText(res, status, toJson(payload));
}

function replyText(res, status, text) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(text);
}

async function handle(devnet, req, res) {
  const url = new URL(req.url, 'http://devnet');
  if (url.pathname.startsWith('/api/v2/')) {
    const status = devnet.mode.refusal(req, url);
    if (status !== null) {
      req.resume(); // the body is never read; let the socket drain
      return reply(res, status, toncenterError(status));
    }
  }
  const handler = handlers[`${req.method} ${url.pathname}`];
  if (!handler) return reply(res, 404, { ok: false, error: `no route ${req.method} ${url.pathname}`, code: 404 });
  try {
    const raw = req.method === 'POST' ? await readBody(req) : '';
    let body = {};
    if (raw) {
      try {
        body = JSON.parse(raw);
      } catch {
        throw new ApiError(400, 'body is not valid JSON');
      }
    }
    const cacheKey = devnet.mode.cacheKey(req.method, url, raw);
    const hit = cacheKey === null ? null : devnet.mode.cached(cacheKey);
    if (hit !== null) return replyText(res, 200, hit);
    const result = await devnet.serial(() => handler(devnet, body, url.searchParams));
    const text = toJson({ ok: true, result });
    if (cacheKey !== null) devnet.mode.remember(cacheKey, text);
    replyText(res, 200, text);
  } catch (err) {
    const status = err instanceof ApiError ? err.status : 500;
    reply(res, status, { ok: false, error: err.message, code: status });
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const devnet = await Devnet.create(opts.state, { globalId: opts.globalId, mode: opts.mode });
  const server = http.createServer((req, res) => void handle(devnet, req, res));
  const timer = opts.state ? setInterval(() => devnet.serial(() => devnet.save(opts.state)), SAVE_EVERY_MS) : null;

  const shutdown = () => {
    if (timer) clearInterval(timer);
    server.close();
    devnet.serial(() => devnet.save(opts.state)).finally(() => process.exit(0));
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);

  server.on('error', (err) => {
    process.stderr.write(`devnet cannot listen on ${opts.host}:${opts.port}: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(opts.port, opts.host, () => {
    process.stdout.write(JSON.stringify({ ready: true, port: server.address().port }) + '\n');
  });
}

main().catch((err) => {
  process.stderr.write(`devnet failed to start: ${err.stack || err}\n`);
  process.exit(1);
});
