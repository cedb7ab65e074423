// Wrappers for the Cocoon contracts (plain JS, @ton/core). They mirror ../ABI.md exactly and are
// a reference for other clients (the Python chain client follows the same layouts).
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const { Address, beginCell, Cell, contractAddress, Dictionary, SendMode } = require('@ton/core');
const { sign } = require('@ton/crypto');

const ARTIFACTS = path.resolve(__dirname, '..', '..', 'src', 'cocoon', 'chain', 'contracts');

function loadCode(name) {
    const meta = JSON.parse(fs.readFileSync(path.join(ARTIFACTS, `${name}.json`), 'utf8'));
    const code = Cell.fromBoc(Buffer.from(meta.codeBoc64, 'base64'))[0];
    const raw = Cell.fromBoc(fs.readFileSync(path.join(ARTIFACTS, `${name}.boc`)))[0];
    if (!raw.equals(code)) throw new Error(`${name}.boc and ${name}.json disagree`);
    if (code.hash().toString('hex').toLowerCase() !== meta.codeHashHex.toLowerCase()) throw new Error(`${name}: hash mismatch`);
    return code;
}

const RegistryOp = {
    setParams: 0x52470001,
    upsertModel: 0x52470002,
    removeModel: 0x52470003,
    addMeasurement: 0x52470004,
    removeMeasurement: 0x52470005,
    upsertProxy: 0x52470006,
    removeProxy: 0x52470007,
    changeOwner: 0x52470008,
};

const ChannelOp = {
    deposit: 0x43480001,
    claim: 0x43480002,
    startClose: 0x43480003,
    withdraw: 0x43480004,
    payout: 0x43480011,
    withdrawn: 0x43480012,
};

const Errors = {
    notOwner: 100,
    invalidParams: 101,
    invalidString: 102,
    notPayer: 200,
    staleVoucher: 201,
    exceedsDeposit: 202,
    badSignature: 203,
    closed: 204,
    closeExpired: 205,
    closing: 206,
    closeNotStarted: 207,
    closeDelayNotOver: 208,
    insufficientValue: 209,
    unknownOp: 0xffff,
};

const VOUCHER_TAG = 0x636f766f;

// A chain's global id (config param 19): part of every voucher, so a voucher never crosses chains.
const MAINNET_GLOBAL_ID = -239; // also @ton/sandbox's default config
const TESTNET_GLOBAL_ID = -3;
const CONFIG_GLOBAL_ID = 19;

function configParams(blockchain) {
    return Dictionary.loadDirect(Dictionary.Keys.Int(32), Dictionary.Values.Cell(), blockchain.config);
}

function globalIdOf(blockchain) {
    return configParams(blockchain).get(CONFIG_GLOBAL_ID).beginParse().loadInt(32);
}

// Switch the sandbox's config to another chain's global id (all other params unchanged).
function setGlobalId(blockchain, globalId) {
    const params = configParams(blockchain);
    params.set(CONFIG_GLOBAL_ID, beginCell().storeInt(globalId, 32).endCell());
    blockchain.setConfig(beginCell().storeDictDirect(params).endCell());
}

function stringCell(s) {
    return beginCell().storeBuffer(Buffer.from(s, 'utf8')).endCell();
}

function sha256(buf) {
    return BigInt('0x' + crypto.createHash('sha256').update(buf).digest('hex'));
}

function modelKey(name) {
    return sha256(Buffer.from(name, 'utf8'));
}

function readStringCell(c) {
    const s = c.beginParse();
    return s.loadBuffer(s.remainingBits / 8).toString('utf8');
}

const ModelValue = {
    serialize(v, b) {
        b.storeUint(v.weightsHash, 256).storeCoins(v.pricePrompt).storeCoins(v.priceCached)
            .storeCoins(v.priceCompletion).storeRef(stringCell(v.name));
    },
    parse(s) {
        return {
            weightsHash: s.loadUintBig(256),
            pricePrompt: s.loadCoins(),
            priceCached: s.loadCoins(),
            priceCompletion: s.loadCoins(),
            name: readStringCell(s.loadRef()),
        };
    },
};

const UnitValue = { serialize() {}, parse() { return true; } };

const ProxyValue = {
    serialize(v, b) {
        b.storeAddress(v.addr).storeUint(v.pubkey, 256).storeRef(stringCell(v.endpoint));
    },
    parse(s) {
        return { addr: s.loadAddress(), pubkey: s.loadUintBig(256), endpoint: readStringCell(s.loadRef()) };
    },
};

function registryData(cfg) {
    return beginCell()
        .storeAddress(cfg.owner)
        .storeUint(cfg.proxyFeeBps, 16)
        .storeCoins(cfg.minClientDeposit)
        .storeCoins(cfg.minWorkerDeposit)
        .storeUint(cfg.closeDelay, 32)
        .storeBit(0) // models
        .storeBit(0) // measurements
        .storeBit(0) // proxies
        .endCell();
}

function header(op, queryId = 0n) {
    return beginCell().storeUint(op, 32).storeUint(queryId, 64);
}

class Registry {
    constructor(address, init) {
        this.address = address;
        this.init = init;
    }

    static fromConfig(cfg, code, workchain = 0) {
        const init = { code, data: registryData(cfg) };
        return new Registry(contractAddress(workchain, init), init);
    }

    async sendDeploy(provider, via, value) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body: beginCell().endCell() });
    }

    async sendRaw(provider, via, value, body) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body });
    }

    static setParamsBody(p, queryId = 0n) {
        return header(RegistryOp.setParams, queryId).storeUint(p.proxyFeeBps, 16).storeCoins(p.minClientDeposit)
            .storeCoins(p.minWorkerDeposit).storeUint(p.closeDelay, 32).endCell();
    }

    static upsertModelBody(m, queryId = 0n) {
        return header(RegistryOp.upsertModel, queryId).storeUint(m.weightsHash, 256).storeCoins(m.pricePrompt)
            .storeCoins(m.priceCached).storeCoins(m.priceCompletion)
            .storeRef(m.nameCell ?? stringCell(m.name)).endCell();
    }

    static removeModelBody(nameHash, queryId = 0n) {
        return header(RegistryOp.removeModel, queryId).storeUint(nameHash, 256).endCell();
    }

    static addMeasurementBody(hash, queryId = 0n) {
        return header(RegistryOp.addMeasurement, queryId).storeUint(hash, 256).endCell();
    }

    static removeMeasurementBody(hash, queryId = 0n) {
        return header(RegistryOp.removeMeasurement, queryId).storeUint(hash, 256).endCell();
    }

    static upsertProxyBody(p, queryId = 0n) {
        return header(RegistryOp.upsertProxy, queryId).storeUint(p.id, 256).storeAddress(p.addr)
            .storeUint(p.pubkey, 256).storeRef(p.endpointCell ?? stringCell(p.endpoint)).endCell();
    }

    static removeProxyBody(id, queryId = 0n) {
        return header(RegistryOp.removeProxy, queryId).storeUint(id, 256).endCell();
    }

    static changeOwnerBody(newOwner, queryId = 0n) {
        return header(RegistryOp.changeOwner, queryId).storeAddress(newOwner).endCell();
    }

    async getOwner(provider) {
        return (await provider.get('get_owner', [])).stack.readAddress();
    }

    async getParams(provider) {
        const s = (await provider.get('get_params', [])).stack;
        return {
            proxyFeeBps: s.readNumber(),
            minClientDeposit: s.readBigNumber(),
            minWorkerDeposit: s.readBigNumber(),
            closeDelay: s.readNumber(),
        };
    }

    async getModel(provider, nameHash) {
        const s = (await provider.get('get_model', [{ type: 'int', value: nameHash }])).stack;
        const found = s.readBoolean();
        const weightsHash = s.readBigNumber();
        const pricePrompt = s.readBigNumber();
        const priceCached = s.readBigNumber();
        const priceCompletion = s.readBigNumber();
        const name = s.readCellOpt();
        if (!found) return null;
        return { weightsHash, pricePrompt, priceCached, priceCompletion, name: readStringCell(name) };
    }

    async getModels(provider) {
        const c = (await provider.get('get_models', [])).stack.readCellOpt();
        return c ? Dictionary.loadDirect(Dictionary.Keys.BigUint(256), ModelValue, c) : Dictionary.empty(Dictionary.Keys.BigUint(256), ModelValue);
    }

    async isMeasurementAllowed(provider, hash) {
        return (await provider.get('is_measurement_allowed', [{ type: 'int', value: hash }])).stack.readBoolean();
    }

    async getMeasurements(provider) {
        const c = (await provider.get('get_measurements', [])).stack.readCellOpt();
        return c ? Dictionary.loadDirect(Dictionary.Keys.BigUint(256), UnitValue, c) : Dictionary.empty(Dictionary.Keys.BigUint(256), UnitValue);
    }

    async getProxy(provider, id) {
        const s = (await provider.get('get_proxy', [{ type: 'int', value: id }])).stack;
        const found = s.readBoolean();
        const addr = s.readAddressOpt();
        const pubkey = s.readBigNumber();
        const endpoint = s.readCellOpt();
        if (!found) return null;
        return { addr, pubkey, endpoint: readStringCell(endpoint) };
    }

    async getProxies(provider) {
        const c = (await provider.get('get_proxies', [])).stack.readCellOpt();
        return c ? Dictionary.loadDirect(Dictionary.Keys.BigUint(256), ProxyValue, c) : Dictionary.empty(Dictionary.Keys.BigUint(256), ProxyValue);
    }
}

function channelData(cfg) {
    const config = beginCell()
        .storeAddress(cfg.payer)
        .storeAddress(cfg.payee)
        .storeUint(BigInt('0x' + Buffer.from(cfg.payerKey).toString('hex')), 256)
        .storeUint(cfg.role, 8)
        .storeUint(cfg.channelId, 64)
        .storeUint(cfg.closeDelay, 32)
        .endCell();
    return beginCell()
        .storeCoins(0) // deposit
        .storeCoins(0) // claimed
        .storeUint(0, 32) // close_at
        .storeBit(0) // closed
        .storeRef(config)
        .endCell();
}

function voucherCell(globalId, channel, cumulative) {
    return beginCell().storeUint(VOUCHER_TAG, 32).storeInt(globalId, 32).storeAddress(channel).storeCoins(cumulative).endCell();
}

function signVoucher(globalId, channel, cumulative, secretKey) {
    return sign(voucherCell(globalId, channel, cumulative).hash(), secretKey);
}

class PaymentChannel {
    constructor(address, init) {
        this.address = address;
        this.init = init;
    }

    static fromConfig(cfg, code, workchain = 0) {
        const init = { code, data: channelData(cfg) };
        return new PaymentChannel(contractAddress(workchain, init), init);
    }

    static depositBody(amount, queryId = 0n) {
        return header(ChannelOp.deposit, queryId).storeCoins(amount).endCell();
    }

    static claimBody(cumulative, signature, queryId = 0n) {
        return header(ChannelOp.claim, queryId).storeCoins(cumulative).storeBuffer(signature, 64).endCell();
    }

    static startCloseBody(queryId = 0n) {
        return header(ChannelOp.startClose, queryId).endCell();
    }

    static withdrawBody(queryId = 0n) {
        return header(ChannelOp.withdraw, queryId).endCell();
    }

    async sendDeposit(provider, via, amount, extra = 10_000_000n, queryId = 0n) {
        await provider.internal(via, { value: amount + extra, sendMode: SendMode.PAY_GAS_SEPARATELY, body: PaymentChannel.depositBody(amount, queryId) });
    }

    async sendClaim(provider, via, cumulative, signature, value = 20_000_000n, queryId = 0n) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body: PaymentChannel.claimBody(cumulative, signature, queryId) });
    }

    async sendStartClose(provider, via, value = 20_000_000n, queryId = 0n) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body: PaymentChannel.startCloseBody(queryId) });
    }

    async sendWithdraw(provider, via, value = 20_000_000n, queryId = 0n) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body: PaymentChannel.withdrawBody(queryId) });
    }

    async sendRaw(provider, via, value, body) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body });
    }

    async getChannel(provider) {
        const s = (await provider.get('get_channel', [])).stack;
        return {
            payer: s.readAddress(),
            payee: s.readAddress(),
            payerKey: s.readBigNumber(),
            role: s.readNumber(),
            deposit: s.readBigNumber(),
            claimed: s.readBigNumber(),
            closeAt: s.readNumber(),
            closed: s.readBoolean(),
        };
    }

    async getChannelConfig(provider) {
        const s = (await provider.get('get_channel_config', [])).stack;
        return { channelId: s.readBigNumber(), closeDelay: s.readNumber() };
    }

    async getVoucherHash(provider, cumulative) {
        return (await provider.get('get_voucher_hash', [{ type: 'int', value: cumulative }])).stack.readBigNumber();
    }
}

// ---- gas / fee bookkeeping ------------------------------------------------------------------

const GAS_REPORT = path.resolve(__dirname, '..', 'build', 'gas-report.json');

function txTo(result, address) {
    const tx = result.transactions.find((t) => t.inMessage?.info.type === 'internal' && t.inMessage.info.dest.equals(address));
    if (!tx) throw new Error(`no transaction to ${address}`);
    return tx;
}

function computePhase(tx) {
    const d = tx.description;
    if (d.type !== 'generic' || d.computePhase.type !== 'vm') return null;
    return d.computePhase;
}

function exitCodeOf(result, address) {
    const cp = computePhase(txTo(result, address));
    return cp ? cp.exitCode : null;
}

function isSuccess(result, address) {
    const tx = txTo(result, address);
    const d = tx.description;
    return d.type === 'generic' && d.computePhase.type === 'vm' && d.computePhase.success && !d.aborted;
}

const gasRows = [];

function recordGas(op, result, address) {
    const tx = txTo(result, address);
    const cp = computePhase(tx);
    const allFees = result.transactions.reduce((acc, t) => acc + t.totalFees.coins, 0n);
    gasRows.push({ op, gas: cp ? Number(cp.gasUsed) : 0, contractFee: tx.totalFees.coins.toString(), traceFees: allFees.toString() });
}

function flushGas(file) {
    let all = {};
    if (fs.existsSync(GAS_REPORT)) {
        try { all = JSON.parse(fs.readFileSync(GAS_REPORT, 'utf8')); } catch { all = {}; }
    }
    all[file] = gasRows;
    fs.mkdirSync(path.dirname(GAS_REPORT), { recursive: true });
    fs.writeFileSync(GAS_REPORT, JSON.stringify(all, null, 2));
}

module.exports = {
    loadCode, RegistryOp, ChannelOp, Errors, VOUCHER_TAG, MAINNET_GLOBAL_ID, TESTNET_GLOBAL_ID, globalIdOf, setGlobalId, stringCell, sha256, modelKey, readStringCell,
    Registry, PaymentChannel, registryData, channelData, voucherCell, signVoucher,
    txTo, exitCodeOf, isSuccess, recordGas, flushGas, GAS_REPORT,
};
