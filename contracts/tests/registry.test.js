'use strict';
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Blockchain } = require('@ton/sandbox');
const { beginCell, toNano } = require('@ton/core');
const H = require('./helpers');

const PARAMS = {
    proxyFeeBps: 1000,
    minClientDeposit: toNano('1'),
    minWorkerDeposit: toNano('5'),
    closeDelay: 3600,
};

describe('Registry', () => {
    let bc, owner, stranger, registry, code;

    before(async () => {
        code = H.loadCode('registry');
        bc = await Blockchain.create();
        owner = await bc.treasury('owner');
        stranger = await bc.treasury('stranger');
        registry = bc.openContract(H.Registry.fromConfig({ owner: owner.address, ...PARAMS }, code));
        const r = await registry.sendDeploy(owner.getSender(), toNano('0.1'));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: deploy', r, registry.address);
    });

    after(() => H.flushGas('registry'));

    const send = async (via, body, value = toNano('0.05')) => registry.sendRaw(via.getSender(), value, body);

    it('deploys and answers every get-method on an empty registry', async () => {
        assert.ok((await registry.getOwner()).equals(owner.address));
        assert.deepEqual(await registry.getParams(), PARAMS);
        assert.equal(await registry.getModel(H.modelKey('none')), null);
        assert.equal((await registry.getModels()).size, 0);
        assert.equal(await registry.isMeasurementAllowed(123n), false);
        assert.equal((await registry.getMeasurements()).size, 0);
        assert.equal(await registry.getProxy(1n), null);
        assert.equal((await registry.getProxies()).size, 0);
    });

    it('rejects every update op from a non-owner with exit code 100 and leaves state unchanged', async () => {
        const before = (await bc.getContract(registry.address)).account.account.storage.state.state.data.hash();
        const bodies = [
            H.Registry.setParamsBody({ ...PARAMS, proxyFeeBps: 1 }),
            H.Registry.upsertModelBody({ name: 'x', weightsHash: 1n, pricePrompt: 1n, priceCached: 1n, priceCompletion: 1n }),
            H.Registry.removeModelBody(H.modelKey('x')),
            H.Registry.addMeasurementBody(5n),
            H.Registry.removeMeasurementBody(5n),
            H.Registry.upsertProxyBody({ id: 1n, addr: stranger.address, pubkey: 2n, endpoint: 'evil:1' }),
            H.Registry.removeProxyBody(1n),
            H.Registry.changeOwnerBody(stranger.address),
        ];
        for (const body of bodies) {
            const r = await send(stranger, body);
            assert.equal(H.exitCodeOf(r, registry.address), H.Errors.notOwner);
            // the failed message bounces back to the sender
            assert.ok(r.transactions.some((t) => t.inMessage?.info.type === 'internal' && t.inMessage.info.bounced));
        }
        const afterHash = (await bc.getContract(registry.address)).account.account.storage.state.state.data.hash();
        assert.ok(before.equals(afterHash));
        assert.ok((await registry.getOwner()).equals(owner.address));
    });

    it('owner sets params; invalid fee is rejected', async () => {
        const p = { proxyFeeBps: 1500, minClientDeposit: toNano('2'), minWorkerDeposit: toNano('10'), closeDelay: 7200 };
        const r = await send(owner, H.Registry.setParamsBody(p));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: set_params', r, registry.address);
        assert.deepEqual(await registry.getParams(), p);

        const bad = await send(owner, H.Registry.setParamsBody({ ...p, proxyFeeBps: 10001 }));
        assert.equal(H.exitCodeOf(bad, registry.address), H.Errors.invalidParams);
        assert.deepEqual(await registry.getParams(), p);
        await send(owner, H.Registry.setParamsBody(PARAMS));
    });

    it('owner upserts, updates and removes models (key = sha256(name))', async () => {
        const m1 = { name: 'Qwen/Qwen3-32B', weightsHash: H.sha256(Buffer.from('weights-1')), pricePrompt: toNano('0.1'), priceCached: toNano('0.01'), priceCompletion: toNano('0.4') };
        const m2 = { name: 'meta-llama/Llama-3.3-70B-Instruct', weightsHash: 42n, pricePrompt: 1n, priceCached: 0n, priceCompletion: 3n };
        let r = await send(owner, H.Registry.upsertModelBody(m1));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: upsert_model (new)', r, registry.address);
        r = await send(owner, H.Registry.upsertModelBody(m2));
        assert.ok(H.isSuccess(r, registry.address));

        const { name, ...rest1 } = m1;
        assert.deepEqual(await registry.getModel(H.modelKey(m1.name)), { ...rest1, name });
        const models = await registry.getModels();
        assert.equal(models.size, 2);
        assert.equal(models.get(H.modelKey(m2.name)).name, m2.name);
        assert.equal(models.get(H.modelKey(m2.name)).priceCompletion, 3n);

        // update in place
        const m1b = { ...m1, priceCompletion: toNano('0.5'), weightsHash: 7n };
        r = await send(owner, H.Registry.upsertModelBody(m1b));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: upsert_model (update)', r, registry.address);
        assert.equal((await registry.getModel(H.modelKey(m1.name))).priceCompletion, toNano('0.5'));
        assert.equal((await registry.getModel(H.modelKey(m1.name))).weightsHash, 7n);
        assert.equal((await registry.getModels()).size, 2);

        // invalid names: empty, with a ref, not whole bytes
        for (const nameCell of [
            beginCell().endCell(),
            beginCell().storeBuffer(Buffer.from('ab')).storeRef(beginCell().endCell()).endCell(),
            beginCell().storeUint(1, 3).endCell(),
        ]) {
            r = await send(owner, H.Registry.upsertModelBody({ ...m2, nameCell }));
            assert.equal(H.exitCodeOf(r, registry.address), H.Errors.invalidString);
        }

        r = await send(owner, H.Registry.removeModelBody(H.modelKey(m2.name)));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: remove_model', r, registry.address);
        assert.equal(await registry.getModel(H.modelKey(m2.name)), null);
        assert.equal((await registry.getModels()).size, 1);
        // removing an absent model is a no-op
        r = await send(owner, H.Registry.removeModelBody(H.modelKey(m2.name)));
        assert.ok(H.isSuccess(r, registry.address));
    });

    it('owner adds and removes image measurements', async () => {
        const tdx = Buffer.alloc(48, 0xab); // a 48-byte TDX measurement
        const h = H.sha256(tdx);
        assert.equal(await registry.isMeasurementAllowed(h), false);
        let r = await send(owner, H.Registry.addMeasurementBody(h));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: add_measurement', r, registry.address);
        await send(owner, H.Registry.addMeasurementBody(99n));
        assert.equal(await registry.isMeasurementAllowed(h), true);
        assert.equal(await registry.isMeasurementAllowed(h + 1n), false);
        assert.deepEqual([...(await registry.getMeasurements()).keys()].sort(), [99n, h].sort());
        r = await send(owner, H.Registry.removeMeasurementBody(h));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: remove_measurement', r, registry.address);
        assert.equal(await registry.isMeasurementAllowed(h), false);
        assert.equal(await registry.isMeasurementAllowed(99n), true);
    });

    it('owner upserts and removes proxies', async () => {
        const proxyWallet = await bc.treasury('proxy');
        const p = { id: H.sha256(Buffer.from('proxy-key')), addr: proxyWallet.address, pubkey: 0xdeadbeefn, endpoint: 'https://proxy1.cocoon.example:8443' };
        let r = await send(owner, H.Registry.upsertProxyBody(p));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: upsert_proxy', r, registry.address);
        const got = await registry.getProxy(p.id);
        assert.ok(got.addr.equals(p.addr));
        assert.equal(got.pubkey, p.pubkey);
        assert.equal(got.endpoint, p.endpoint);
        assert.equal((await registry.getProxies()).get(p.id).endpoint, p.endpoint);

        r = await send(owner, H.Registry.upsertProxyBody({ ...p, endpoint: 'tcp://10.0.0.1:9000' }));
        assert.ok(H.isSuccess(r, registry.address));
        assert.equal((await registry.getProxy(p.id)).endpoint, 'tcp://10.0.0.1:9000');

        r = await send(owner, H.Registry.upsertProxyBody({ ...p, id: 2n, endpointCell: beginCell().endCell() }));
        assert.equal(H.exitCodeOf(r, registry.address), H.Errors.invalidString);

        r = await send(owner, H.Registry.removeProxyBody(p.id));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: remove_proxy', r, registry.address);
        assert.equal(await registry.getProxy(p.id), null);
    });

    it('accepts an empty-body top-up and rejects unknown ops with 0xFFFF', async () => {
        let r = await send(stranger, beginCell().endCell());
        assert.ok(H.isSuccess(r, registry.address));
        r = await send(owner, beginCell().storeUint(0x12345678, 32).storeUint(0, 64).endCell());
        assert.equal(H.exitCodeOf(r, registry.address), H.Errors.unknownOp);
    });

    it('changes owner: the old owner loses rights, the new one gains them', async () => {
        const newOwner = await bc.treasury('new-owner');
        let r = await send(owner, H.Registry.changeOwnerBody(newOwner.address));
        assert.ok(H.isSuccess(r, registry.address));
        H.recordGas('registry: change_owner', r, registry.address);
        assert.ok((await registry.getOwner()).equals(newOwner.address));
        r = await send(owner, H.Registry.addMeasurementBody(1n));
        assert.equal(H.exitCodeOf(r, registry.address), H.Errors.notOwner);
        r = await send(newOwner, H.Registry.addMeasurementBody(1n));
        assert.ok(H.isSuccess(r, registry.address));
        assert.equal(await registry.isMeasurementAllowed(1n), true);
    });
});
