#!/usr/bin/env node
// Prints the gas/fee table collected by the sandbox tests (build/gas-report.json).
'use strict';
const fs = require('fs');
const path = require('path');
const { fromNano } = require('@ton/core');

const file = path.resolve(__dirname, '..', 'build', 'gas-report.json');
if (!fs.existsSync(file)) {
    console.error('no gas report (run the tests first)');
    process.exit(1);
}
const report = JSON.parse(fs.readFileSync(file, 'utf8'));
const rows = Object.keys(report).sort().flatMap((k) => report[k]);
const head = ['op', 'gas used', 'contract tx fees (TON)', 'all tx fees in trace (TON)'];
const body = rows.map((r) => [r.op, String(r.gas), fromNano(BigInt(r.contractFee)), fromNano(BigInt(r.traceFees))]);
const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
const line = (cells) => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ') + ' |';
console.log('\nGas / fees per operation (@ton/sandbox, basechain config):');
console.log(line(head));
console.log('|' + widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|');
for (const b of body) console.log(line(b));
