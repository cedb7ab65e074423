'use strict';
// Checks contracts/test-vectors.json (consumed by the Python chain client) against the contracts
// running in the sandbox: the vectors' init data deploy to the vectors' addresses, and every vector
// message body is accepted and has the documented effect.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const { Blockchain, internal } = require('@ton/sandbox');
const { Address, Cell, toNano } = require('@ton/core');
const H = require('./helpers');
const { makeVectors, OUT } = require('../scripts/vectors');

const V = JSON.parse(fs.readFileSync(OUT, 'utf8'));
const cell = (h) => Cell.fromBoc(Buffer.from(h, 'hex'))[0];

async function send(bc, from, to, body, value = toNano('0.05'), init) {
    return bc.sendMessage(internal({ from: Address.parse(from), to, value, body, stateInit: init, bounce: true }));
}

describe('test-vectors.json', () => {
    it('is up to date with the compiled code and the helpers', () => {
        assert.deepEqual(V, JSON.parse(JSON.stringify(makeVectors())), 'run `npm run build` to regenerate test-vectors.json');
    });

    it('registry vectors work on chain', async () => {
        const bc = await Blockchain.create();
        const code = H.loadCode('registry');
        const init = { code, data: cell(V.registry.dataBocHex) };
        const reg = bc.openContract(new H.Registry(Address.parse(V.registry.address), init));
        let r = await send(bc, V.addresses.owner, reg.address, undefined, toNano('0.1'), init);
        assert.ok(H.isSuccess(r, reg.address));
        for (const op of ['set_params', 'upsert_model', 'add_measurement', 'upsert_proxy']) {
            r = await send(bc, V.addresses.owner, reg.address, cell(V.registry.bodies[op].bocHex));
            assert.ok(H.isSuccess(r, reg.address), op);
        }
        assert.equal((await reg.getParams()).proxyFeeBps, V.registry.bodyParams.setParamsProxyFeeBps);
        const m = await reg.getModel(BigInt(V.registry.modelKey));
        assert.equal(m.name, V.registry.modelName);
        assert.equal(String(m.priceCompletion), V.registry.bodyParams.model.priceCompletion);
        assert.equal(await reg.isMeasurementAllowed(BigInt(V.registry.measurementKey)), true);
        const p = await reg.getProxy(BigInt(V.registry.bodyParams.proxy.id));
        assert.equal(p.addr.toRawString(), V.registry.bodyParams.proxy.addr);
        assert.equal(p.endpoint, V.registry.bodyParams.proxy.endpoint);
        for (const op of ['remove_model', 'remove_measurement', 'remove_proxy', 'change_owner']) {
            r = await send(bc, V.addresses.owner, reg.address, cell(V.registry.bodies[op].bocHex));
            assert.ok(H.isSuccess(r, reg.address), op);
        }
        assert.equal(await reg.getModel(BigInt(V.registry.modelKey)), null);
        assert.equal((await reg.getOwner()).toRawString(), V.registry.bodyParams.changeOwnerTo);
    });

    it('channel vectors work on chain (voucher hash and signature included)', async () => {
        const bc = await Blockchain.create();
        const code = H.loadCode('payment_channel');
        const init = { code, data: cell(V.channel.dataBocHex) };
        const ch = bc.openContract(new H.PaymentChannel(Address.parse(V.channel.address), init));
        const B = V.channel.bodies;
        let r = await send(bc, V.addresses.payer, ch.address, cell(B.deposit.bocHex), toNano('10.05'), init);
        assert.ok(H.isSuccess(r, ch.address));
        const c = await ch.getChannel();
        assert.equal(String(c.deposit), V.channel.bodyParams.depositAmount);
        assert.equal(c.payerKey.toString(16).padStart(64, '0'), V.channel.config.payerKeyHex);
        assert.equal((await ch.getVoucherHash(BigInt(V.channel.voucher.cumulative))).toString(16).padStart(64, '0'), V.channel.voucher.cellHashHex);
        r = await send(bc, V.addresses.payee, ch.address, cell(B.claim.bocHex));
        assert.ok(H.isSuccess(r, ch.address));
        assert.equal(String((await ch.getChannel()).claimed), V.channel.voucher.cumulative);
        r = await send(bc, V.addresses.payer, ch.address, cell(B.start_close.bocHex));
        assert.ok(H.isSuccess(r, ch.address));
        bc.now = (await ch.getChannel()).closeAt;
        r = await send(bc, V.addresses.payer, ch.address, cell(B.withdraw.bocHex));
        assert.ok(H.isSuccess(r, ch.address));
        assert.equal((await ch.getChannel()).closed, true);
    });
});
