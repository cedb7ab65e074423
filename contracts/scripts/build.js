#!/usr/bin/env node
// Compiles every contracts/*.tolk with the WASM Tolk compiler (@ton/tolk-js) and writes
//   ../src/cocoon/chain/contracts/<name>.boc   raw BOC of the code cell
//   ../src/cocoon/chain/contracts/<name>.json  {"name","codeBoc64","codeHashHex","tolkVersion"}
// and regenerates ./test-vectors.json (see scripts/vectors.js).
'use strict';
const fs = require('fs');
const path = require('path');
const { runTolkCompiler } = require('@ton/tolk-js');

const ROOT = path.resolve(__dirname, '..');
const SRC_DIR = path.join(ROOT, 'contracts');
const OUT_DIR = path.resolve(ROOT, '..', 'src', 'cocoon', 'chain', 'contracts');

async function compile(name) {
    const res = await runTolkCompiler({
        entrypointFileName: `${name}.tolk`,
        fsReadCallback: (p) => fs.readFileSync(path.join(SRC_DIR, p), 'utf8'),
        optimizationLevel: 2,
    });
    if (res.status !== 'ok') {
        throw new Error(`tolk: ${name}.tolk failed:\n${res.message}`);
    }
    return res;
}

async function main() {
    const names = fs.readdirSync(SRC_DIR).filter((f) => f.endsWith('.tolk')).map((f) => f.slice(0, -5)).sort();
    fs.mkdirSync(OUT_DIR, { recursive: true });
    for (const name of names) {
        const res = await compile(name);
        const boc = Buffer.from(res.codeBoc64, 'base64');
        fs.writeFileSync(path.join(OUT_DIR, `${name}.boc`), boc);
        const meta = { name, codeBoc64: res.codeBoc64, codeHashHex: res.codeHashHex.toLowerCase(), tolkVersion: res.tolkVersion };
        fs.writeFileSync(path.join(OUT_DIR, `${name}.json`), JSON.stringify(meta, null, 2) + '\n');
        console.log(`built ${name}: ${boc.length} bytes, code hash ${meta.codeHashHex}, tolk ${res.tolkVersion}`);
    }
    // test vectors depend on the code (addresses), so they are regenerated with every build
    const { makeVectors, OUT } = require('./vectors');
    fs.writeFileSync(OUT, JSON.stringify(makeVectors(), null, 2) + '\n');
    console.log(`wrote ${path.relative(process.cwd(), OUT)}`);
}

main().catch((e) => {
    console.error(e.message || e);
    process.exit(1);
});
