'use strict';
const { describe, it, before, beforeEach, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('crypto');
const { Blockchain } = require('@ton/sandbox');
const { beginCell, toNano } = require('@ton/core');
const { keyPairFromSeed } = require('@ton/crypto');
const H = require('./helpers');

const CLOSE_DELAY = 3600;
const T0 = 1_800_000_000;

function parsePayout(msg) {
    const s = msg.body.beginParse();
    return { op: s.loadUint(32), queryId: s.loadUintBig(64), amount: s.loadCoins(), cumulative: s.loadCoins() };
}

function outMessagesTo(result, from, to) {
    return result.transactions
        .filter((t) => t.inMessage?.info.type === 'internal' && t.inMessage.info.dest.equals(to) && t.inMessage.info.src.equals(from))
        .map((t) => t.inMessage);
}

describe('PaymentChannel', () => {
    let code, bc, payer, payee, stranger, keys, otherKeys, channel, other, payeeWallet;
    let nextId = 1n;
    let deployRecorded = false;

    const mk = (overrides = {}) => H.PaymentChannel.fromConfig({
        payer: payer.address, payee: payee.address, payerKey: keys.publicKey, role: 0,
        channelId: nextId++, closeDelay: CLOSE_DELAY, ...overrides,
    }, code);

    const sig = (ch, cumulative, secret = keys.secretKey, globalId = H.MAINNET_GLOBAL_ID) => H.signVoucher(globalId, ch.address, cumulative, secret);
    const balance = async (addr) => (await bc.getContract(addr)).balance;

    before(async () => {
        code = H.loadCode('payment_channel');
        keys = keyPairFromSeed(crypto.createHash('sha256').update('payer-key').digest());
        otherKeys = keyPairFromSeed(crypto.createHash('sha256').update('other-key').digest());
    });

    beforeEach(async () => {
        bc = await Blockchain.create();
        bc.now = T0;
        payer = await bc.treasury('payer');
        payee = await bc.treasury('payee');
        stranger = await bc.treasury('stranger');
        channel = bc.openContract(mk());
        // deploy with the first deposit
        const r = await channel.sendDeposit(payer.getSender(), toNano('10'));
        assert.ok(H.isSuccess(r, channel.address), 'deploy+deposit');
        if (!deployRecorded) {
            H.recordGas('channel: deploy + first deposit', r, channel.address);
            deployRecorded = true;
        }
    });

    after(() => H.flushGas('payment_channel'));

    it('deploys with init data visible through get-methods', async () => {
        const c = await channel.getChannel();
        assert.ok(c.payer.equals(payer.address));
        assert.ok(c.payee.equals(payee.address));
        assert.equal(c.payerKey, BigInt('0x' + keys.publicKey.toString('hex')));
        assert.equal(c.role, 0);
        assert.equal(c.deposit, toNano('10'));
        assert.equal(c.claimed, 0n);
        assert.equal(c.closeAt, 0);
        assert.equal(c.closed, false);
        const cfg = await channel.getChannelConfig();
        assert.equal(cfg.closeDelay, CLOSE_DELAY);
        assert.equal(await channel.getVoucherHash(123n), BigInt('0x' + H.voucherCell(H.MAINNET_GLOBAL_ID, channel.address, 123n).hash().toString('hex')));
    });

    it('distinct channel ids and roles give distinct addresses; a worker channel (role 1) works the same', async () => {
        const a = mk({ channelId: 1000n });
        const b = mk({ channelId: 1001n });
        const w = bc.openContract(mk({ channelId: 1000n, role: 1 }));
        assert.ok(!a.address.equals(b.address));
        assert.ok(!a.address.equals(w.address));
        let r = await w.sendDeposit(payer.getSender(), toNano('3'));
        assert.ok(H.isSuccess(r, w.address));
        assert.equal((await w.getChannel()).role, 1);
        r = await w.sendClaim(payee.getSender(), toNano('1'), sig(w, toNano('1')));
        assert.ok(H.isSuccess(r, w.address));
        assert.equal((await w.getChannel()).claimed, toNano('1'));
    });

    it('top-up: payer and third parties add to the deposit; value must cover amount + 0.01 TON', async () => {
        let r = await channel.sendDeposit(payer.getSender(), toNano('2'));
        assert.ok(H.isSuccess(r, channel.address));
        H.recordGas('channel: top-up (deposit)', r, channel.address);
        r = await channel.sendDeposit(stranger.getSender(), toNano('1'));
        assert.ok(H.isSuccess(r, channel.address));
        assert.equal((await channel.getChannel()).deposit, toNano('13'));
        r = await channel.sendDeposit(payer.getSender(), toNano('1'), toNano('0.005'));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.insufficientValue);
        // a plain transfer is accepted but not counted as deposit
        r = await channel.sendRaw(stranger.getSender(), toNano('1'), beginCell().endCell());
        assert.ok(H.isSuccess(r, channel.address));
        assert.equal((await channel.getChannel()).deposit, toNano('13'));
        // unknown op
        r = await channel.sendRaw(payer.getSender(), toNano('0.05'), beginCell().storeUint(0xabcdef01, 32).storeUint(0, 64).endCell());
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.unknownOp);
        // the channel always holds at least deposit - claimed
        assert.ok((await balance(channel.address)) >= toNano('13'));
    });

    it('claim with a valid voucher pays exactly the increase to the payee (even when sent by a third party)', async () => {
        const before = await balance(channel.address);
        let r = await channel.sendClaim(payee.getSender(), toNano('1.5'), sig(channel, toNano('1.5')), toNano('0.02'), 77n);
        assert.ok(H.isSuccess(r, channel.address));
        H.recordGas('channel: claim', r, channel.address);
        const [m] = outMessagesTo(r, channel.address, payee.address);
        const p = parsePayout(m);
        assert.deepEqual(p, { op: H.ChannelOp.payout, queryId: 77n, amount: toNano('1.5'), cumulative: toNano('1.5') });
        // the message carries amount + (rest of the claim's 0.02 TON after gas): at least amount, less than amount + 0.02
        assert.ok(m.info.value.coins > toNano('1.5') && m.info.value.coins < toNano('1.52'));
        // the channel's balance drops by exactly the amount (the claimer pays the gas)
        const after1 = await balance(channel.address);
        assert.ok(before - after1 >= toNano('1.5') && before - after1 < toNano('1.5') + 1000n, `drop ${before - after1}`);
        assert.equal((await channel.getChannel()).claimed, toNano('1.5'));

        // a newer voucher pays only the increase; anyone may submit it, funds go to the payee
        r = await channel.sendClaim(stranger.getSender(), toNano('4'), sig(channel, toNano('4')));
        assert.ok(H.isSuccess(r, channel.address));
        H.recordGas('channel: claim (next voucher)', r, channel.address);
        assert.equal(parsePayout(outMessagesTo(r, channel.address, payee.address)[0]).amount, toNano('2.5'));
        assert.equal(outMessagesTo(r, channel.address, stranger.address).length, 0);
        assert.equal((await channel.getChannel()).claimed, toNano('4'));
        // claim exactly the whole deposit
        r = await channel.sendClaim(payee.getSender(), toNano('10'), sig(channel, toNano('10')));
        assert.ok(H.isSuccess(r, channel.address));
        assert.equal(parsePayout(outMessagesTo(r, channel.address, payee.address)[0]).amount, toNano('6'));
    });

    it('double claim with the same voucher is rejected (stale) and pays nothing', async () => {
        const s = sig(channel, toNano('2'));
        let r = await channel.sendClaim(payee.getSender(), toNano('2'), s);
        assert.ok(H.isSuccess(r, channel.address));
        r = await channel.sendClaim(payee.getSender(), toNano('2'), s);
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.staleVoucher);
        H.recordGas('channel: claim rejected (stale)', r, channel.address);
        const back = outMessagesTo(r, channel.address, payee.address);
        assert.equal(back.filter((m) => !m.info.bounced).length, 0); // no payout
        assert.equal(back.filter((m) => m.info.bounced).length, 1); // only the bounce of the claim message
        assert.equal((await channel.getChannel()).claimed, toNano('2'));
    });

    it('a stale (lower) voucher is rejected', async () => {
        let r = await channel.sendClaim(payee.getSender(), toNano('3'), sig(channel, toNano('3')));
        assert.ok(H.isSuccess(r, channel.address));
        r = await channel.sendClaim(payee.getSender(), toNano('1'), sig(channel, toNano('1')));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.staleVoucher);
        r = await channel.sendClaim(payee.getSender(), 0n, sig(channel, 0n));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.staleVoucher);
        assert.equal((await channel.getChannel()).claimed, toNano('3'));
    });

    it('a voucher signed by another key is rejected', async () => {
        let r = await channel.sendClaim(payee.getSender(), toNano('1'), sig(channel, toNano('1'), otherKeys.secretKey));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.badSignature);
        H.recordGas('channel: claim rejected (bad signature)', r, channel.address);
        // a valid signature for a different amount does not verify either
        r = await channel.sendClaim(payee.getSender(), toNano('2'), sig(channel, toNano('1')));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.badSignature);
        assert.equal((await channel.getChannel()).claimed, 0n);
    });

    it('a signature made for another channel (same payer key) is rejected', async () => {
        other = bc.openContract(mk());
        let r = await other.sendDeposit(payer.getSender(), toNano('10'));
        assert.ok(H.isSuccess(r, other.address));
        const sOther = sig(other, toNano('1'));
        r = await channel.sendClaim(payee.getSender(), toNano('1'), sOther);
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.badSignature);
        // ... while it is valid on its own channel
        r = await other.sendClaim(payee.getSender(), toNano('1'), sOther);
        assert.ok(H.isSuccess(r, other.address));
    });

    it('a voucher signed for another chain (global id) is rejected; the same voucher for this chain is paid', async () => {
        assert.equal(H.globalIdOf(bc), H.MAINNET_GLOBAL_ID); // the sandbox's default config is mainnet's
        // same channel, same amount, same key: only the chain differs (a testnet voucher replayed on mainnet)
        let r = await channel.sendClaim(payee.getSender(), toNano('1'), sig(channel, toNano('1'), keys.secretKey, H.TESTNET_GLOBAL_ID));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.badSignature);
        assert.equal((await channel.getChannel()).claimed, 0n);
        r = await channel.sendClaim(payee.getSender(), toNano('1'), sig(channel, toNano('1')));
        assert.ok(H.isSuccess(r, channel.address));
        assert.equal((await channel.getChannel()).claimed, toNano('1'));
    });

    it('on a testnet config the contract takes testnet vouchers only (it reads the global id from the chain)', async () => {
        H.setGlobalId(bc, H.TESTNET_GLOBAL_ID);
        assert.equal(H.globalIdOf(bc), H.TESTNET_GLOBAL_ID);
        assert.equal(await channel.getVoucherHash(123n), BigInt('0x' + H.voucherCell(H.TESTNET_GLOBAL_ID, channel.address, 123n).hash().toString('hex')));
        let r = await channel.sendClaim(payee.getSender(), toNano('1'), sig(channel, toNano('1')));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.badSignature);
        r = await channel.sendClaim(payee.getSender(), toNano('1'), sig(channel, toNano('1'), keys.secretKey, H.TESTNET_GLOBAL_ID));
        assert.ok(H.isSuccess(r, channel.address));
        assert.equal((await channel.getChannel()).claimed, toNano('1'));
    });

    it('a claim above the deposit is rejected', async () => {
        let r = await channel.sendClaim(payee.getSender(), toNano('10') + 1n, sig(channel, toNano('10') + 1n));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.exceedsDeposit);
        // after a top-up the same voucher becomes claimable
        r = await channel.sendDeposit(payer.getSender(), toNano('1'));
        assert.ok(H.isSuccess(r, channel.address));
        r = await channel.sendClaim(payee.getSender(), toNano('10') + 1n, sig(channel, toNano('10') + 1n));
        assert.ok(H.isSuccess(r, channel.address));
    });

    it('a claim carrying less than 0.01 TON for gas is rejected', async () => {
        const r = await channel.sendClaim(payee.getSender(), toNano('1'), sig(channel, toNano('1')), toNano('0.005'));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.insufficientValue);
    });

    it('if the balance ever fell below the debt, a claim is rolled back and bounced (claimed unchanged)', async () => {
        const sc = await bc.getContract(channel.address);
        sc.balance = toNano('0.5'); // simulate an eroded balance (cannot happen with the 0.01 TON buffers)
        const r = await channel.sendClaim(payee.getSender(), toNano('1'), sig(channel, toNano('1')));
        const tx = H.txTo(r, channel.address);
        assert.equal(tx.description.aborted, true);
        assert.equal(tx.description.actionPhase.success, false);
        const back = outMessagesTo(r, channel.address, payee.address);
        assert.equal(back.length, 1);
        assert.equal(back[0].info.bounced, true);
        assert.equal((await channel.getChannel()).claimed, 0n);
    });

    it('start_close by anyone but the payer is rejected; withdraw too', async () => {
        for (const who of [payee, stranger]) {
            let r = await channel.sendStartClose(who.getSender());
            assert.equal(H.exitCodeOf(r, channel.address), H.Errors.notPayer);
            r = await channel.sendWithdraw(who.getSender());
            assert.equal(H.exitCodeOf(r, channel.address), H.Errors.notPayer);
        }
        assert.equal((await channel.getChannel()).closeAt, 0);
    });

    it('withdraw without start_close is rejected', async () => {
        const r = await channel.sendWithdraw(payer.getSender());
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.closeNotStarted);
    });

    it('close flow: claims during the delay work, withdraw waits for the delay, returns the rest, then everything is refused', async () => {
        let r = await channel.sendClaim(payee.getSender(), toNano('1'), sig(channel, toNano('1')));
        assert.ok(H.isSuccess(r, channel.address));

        bc.now = T0 + 100;
        r = await channel.sendStartClose(payer.getSender());
        assert.ok(H.isSuccess(r, channel.address));
        H.recordGas('channel: start_close', r, channel.address);
        assert.equal((await channel.getChannel()).closeAt, T0 + 100 + CLOSE_DELAY);
        // second start_close cannot extend the delay; deposits are refused while closing
        r = await channel.sendStartClose(payer.getSender());
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.closing);
        r = await channel.sendDeposit(payer.getSender(), toNano('1'));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.closing);

        // the payee submits a newer voucher during the delay
        bc.now = T0 + 100 + CLOSE_DELAY - 1;
        r = await channel.sendClaim(payee.getSender(), toNano('3.25'), sig(channel, toNano('3.25')));
        assert.ok(H.isSuccess(r, channel.address));
        H.recordGas('channel: claim during close delay', r, channel.address);
        assert.equal(parsePayout(outMessagesTo(r, channel.address, payee.address)[0]).amount, toNano('2.25'));

        // withdraw before the delay is over
        r = await channel.sendWithdraw(payer.getSender());
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.closeDelayNotOver);
        H.recordGas('channel: withdraw rejected (too early)', r, channel.address);

        // after the delay: no more claims ...
        bc.now = T0 + 100 + CLOSE_DELAY;
        r = await channel.sendClaim(payee.getSender(), toNano('4'), sig(channel, toNano('4')));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.closeExpired);

        // ... and the payer withdraws the rest
        const chBalance = await balance(channel.address);
        const payerBefore = await balance(payer.address);
        r = await channel.sendWithdraw(payer.getSender(), toNano('0.02'), 9n);
        assert.ok(H.isSuccess(r, channel.address));
        H.recordGas('channel: withdraw', r, channel.address);
        const msgs = outMessagesTo(r, channel.address, payer.address);
        assert.equal(msgs.length, 1);
        const s = msgs[0].body.beginParse();
        assert.equal(s.loadUint(32), H.ChannelOp.withdrawn);
        assert.equal(s.loadUintBig(64), 9n);
        assert.equal(s.loadCoins(), toNano('10') - toNano('3.25'));
        // the whole balance (>= deposit - claimed, plus the gas buffer) went back
        assert.ok(msgs[0].info.value.coins >= toNano('6.75'));
        assert.ok(msgs[0].info.value.coins <= chBalance + toNano('0.02'));
        assert.ok((await balance(payer.address)) - payerBefore > toNano('6.75'));
        assert.equal(await balance(channel.address), 0n);
        const c = await channel.getChannel();
        assert.equal(c.closed, true);
        assert.equal(c.claimed, toNano('3.25'));

        // after close: claim, deposit, start_close, withdraw are all refused
        r = await channel.sendClaim(payee.getSender(), toNano('5'), sig(channel, toNano('5')));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.closed);
        H.recordGas('channel: claim rejected (closed)', r, channel.address);
        r = await channel.sendDeposit(payer.getSender(), toNano('1'));
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.closed);
        r = await channel.sendStartClose(payer.getSender());
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.closed);
        r = await channel.sendWithdraw(payer.getSender());
        assert.equal(H.exitCodeOf(r, channel.address), H.Errors.closed);
    });

    it('money conservation: payee receives Σ increases, payer gets deposit - claimed back', async () => {
        const steps = [toNano('0.3'), toNano('1.1'), toNano('1.1'), toNano('2.7')];
        let paid = 0n;
        for (const c of steps) {
            const r = await channel.sendClaim(payee.getSender(), c, sig(channel, c));
            if (c > paid) {
                assert.ok(H.isSuccess(r, channel.address));
                paid += parsePayout(outMessagesTo(r, channel.address, payee.address)[0]).amount;
            } else {
                assert.equal(H.exitCodeOf(r, channel.address), H.Errors.staleVoucher);
            }
        }
        assert.equal(paid, toNano('2.7'));
        await channel.sendStartClose(payer.getSender());
        bc.now = T0 + CLOSE_DELAY;
        const r = await channel.sendWithdraw(payer.getSender());
        const s = outMessagesTo(r, channel.address, payer.address)[0].body.beginParse();
        s.skip(96);
        assert.equal(s.loadCoins() + paid, toNano('10'));
    });
});
