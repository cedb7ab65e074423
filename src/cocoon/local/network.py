"""``LocalNetwork``: a whole cocoon network on loopback, as real processes (``cocoon up``, tests, bench/).

Writes role configs under a state folder, starts the proxy, the workers and the client sidecar (and, with
money, a devnet chain first), waits until the network answers (with progress), sends one demo chat request,
and stops every child cleanly on Ctrl-C or SIGTERM. While it runs (``run``), a child that dies is restarted
with backoff (``supervisor.py``); the devnet's death ends the network, saying where its log is. Each port base
has its own state folder, locked while a network runs in it, so two networks on one machine never share keys,
stores or chain state.
"""

from __future__ import annotations

import fcntl
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from rich.console import Console

from cocoon.attestation.simulated import DEV_MEASUREMENT
from cocoon.chain.devnet import DevnetOptions
from cocoon.config import cocoon_home
from cocoon.crypto import SigningKey, load_or_create_node_keys
from cocoon.engines.bundled import SMOLLM2_MODEL, SMOLLM2_SHA256, smollm2_model_path
from cocoon.engines.config import DEFAULT_MODEL
from cocoon.engines.model_cache import bundled_model_path, sha256_file
from cocoon.engines.synthetic import SYNTHETIC_MODEL_HASH
from cocoon.errors import ChildDied, ConfigError, UpstreamFailed, map_http_errors
from cocoon.local.authority import DevAuthority
from cocoon.local.chain import LocalChain, money_options, print_money_demo, print_money_intro, start_local_chain
from cocoon.local.processes import DEVNET_OFFSET, PROXY_OFFSET, Child, port_in_use, spawn, stop_all
from cocoon.local.supervisor import Supervisor
from cocoon.protocol.tls import trust_context

console = Console(stderr=True, soft_wrap=True)  # long paths and URLs stay on one line, copyable
out = Console(soft_wrap=True)
QUOTE_MAX_AGE_S = 300.0


class LocalNetwork:
    """The processes of one local network. Tests use it too, with their own ports and options."""

    def __init__(
        self,
        port_base: int = 8080,
        workers: int = 2,
        home: Path | None = None,
        model_path: Path | None = None,
        *,
        proxy_port: int | None = None,
        engine: dict[str, Any] | None = None,
        proxy_options: dict[str, Any] | None = None,
        worker_options: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
        worker_overrides: dict[int, dict[str, Any]] | None = None,
        capture_wire: Path | None = None,
        money: bool = False,
        devnet_port: int | None = None,
        devnet_options: DevnetOptions | None = None,
        smollm2: bool = False,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.client_port = port_base
        self.proxy_port = proxy_port or port_base + PROXY_OFFSET
        self.workers = workers
        self.home = home or default_home(port_base)
        self.model_path = model_path
        self.engine = engine or {}
        self.proxy_options = proxy_options or {}
        self.worker_options = worker_options or {}
        self.client_options = client_options or {}  # the sidecar's settings over the network's own
        self.worker_overrides = worker_overrides or {}  # worker number (from 1) -> options for that worker only
        self.capture_wire = capture_wire
        self.money = money  # a devnet chain, prices, funded wallets: requests are paid in TON
        self.devnet_port = devnet_port or self.proxy_port + DEVNET_OFFSET - PROXY_OFFSET
        self.devnet_options = devnet_options  # the devnet answering as toncenter on a real network does
        # Every worker also serves SmolLM2-135M-Instruct (the smollm extra), a model that can chat.
        self.smollm2 = smollm2
        # (certificate, key): the proxy serves HTTPS/WSS with them and workers and sidecar trust that certificate.
        self.tls = tls
        self.chain: LocalChain | None = None
        self.children: list[Child] = []
        self.policy: dict[str, Any] = {}
        self.model_file = Path()
        self.model_hash = ""
        self.extra_engines: list[dict[str, Any]] = []  # engine tables every worker serves beside the main one
        # The attestation authority lives in this process only (a fresh key per start); workers ask it for quotes.
        self.authority = DevAuthority()
        self.authority_url = ""
        self._stop = threading.Event()
        self._lock: int | None = None  # the state folder's lock file, held while the network runs

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}/v1"

    @property
    def proxy_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.proxy_port}"

    @property
    def synthetic(self) -> bool:
        """Whether the workers run the synthetic engine (benchmarks), whose weights hash is fixed."""
        return self.engine.get("kind") == "synthetic"

    def run(self, demo: bool, exit_after_demo: bool) -> int:
        """Start, wait, demo, then block until a signal or a child's death. Returns the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        try:
            self.start()
            self.wait_ready(timeout=180)
            out.print(f"[bold green]cocoon is up[/]: OpenAI base URL [bold]{self.base_url}[/]")
            models = [str(self.engine.get("model", DEFAULT_MODEL)), *(str(e["model"]) for e in self.extra_engines)]
            out.print("  models: " + ", ".join(models))
            out.print(f"  explorer [bold]{self.proxy_url}/[/] (or `cocoon status`)")
            out.print(f"  proxy {self.proxy_url} (directory {self.proxy_url}/v1/directory, metrics /metrics)")
            out.print(f"  try: OPENAI_BASE_URL={self.base_url} OPENAI_API_KEY=unused python your_app.py")
            if self.chain is not None:
                print_money_intro(self.chain, self.home, self.proxy_url)
            if demo:
                self.demo()
            if exit_after_demo:
                return 0
            out.print("  logs in " + str(self.home / "logs") + "; Ctrl-C stops everything")
            supervisor = Supervisor(self.children, say=lambda line: console.print(line, markup=False))
            while not self._stop.wait(0.5):
                supervisor.check()
            return 0
        finally:
            self.stop()

    def start(self) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._hold_home()
        self._check_ports()
        model = self.model_path or bundled_model_path(progress=True)
        model_hash = sha256_file(model)
        self.authority_url = self.authority_url or self.authority.start()
        served_hash = SYNTHETIC_MODEL_HASH if self.synthetic else model_hash
        self.extra_engines = []
        if self.smollm2 and not self.synthetic:
            path = smollm2_model_path()  # its SHA-256 checked against SMOLLM2_SHA256
            self.extra_engines.append(
                {"kind": "llamacpp", "model": SMOLLM2_MODEL, "model_path": str(path), "model_hash": SMOLLM2_SHA256}
            )
        extra_hashes = {str(e["model"]): str(e["model_hash"]) for e in self.extra_engines}
        policy = {
            "allow_simulated": True,
            "simulated_authorities": [self.authority.public_hex],
            "allowed_measurements": [DEV_MEASUREMENT],
            # A network of synthetic workers (benchmarks) admits that engine's fixed weights hash, no other.
            "allowed_model_hashes": [served_hash, *extra_hashes.values()],
            # Workers fetch a fresh quote for every session, so a copied one is soon worthless.
            "max_quote_age_s": QUOTE_MAX_AGE_S,
        }
        self.policy = policy
        self.model_file, self.model_hash = model, model_hash
        if self.money:
            # The registry lists the weights the workers serve: it is the network's allow-list of models.
            models = {str(self.engine.get("model", DEFAULT_MODEL)): served_hash}
            models.setdefault(DEFAULT_MODEL, model_hash)
            models |= extra_hashes
            self.chain = start_local_chain(
                self.home,
                self.devnet_port,
                models=models,
                workers=self.workers,
                spawn=self._start_child,
                options=self.devnet_options,
            )
        proxy = {"port": self.proxy_port, "policy": policy, "data_dir": str(self.home / "proxy")}
        if self.tls:
            proxy |= {"tls_certfile": str(self.tls[0]), "tls_keyfile": str(self.tls[1])}
        self._write("proxy.toml", proxy | money_options(self.chain, self.home, "proxy") | self.proxy_options)
        extra = ["--capture-wire", str(self.capture_wire)] if self.capture_wire else []
        self._spawn("proxy", "proxy.toml", extra)
        for i in range(1, self.workers + 1):
            self.add_worker(i)
        client = {"port": self.client_port, "proxy_url": self.proxy_url, "policy": policy} | self._trust()
        client["data_dir"] = str(self.home / "client")  # its API keys are this network's, not the user's
        self._write("client.toml", client | money_options(self.chain, self.home, "client") | self.client_options)
        self._spawn("client", "client.toml")

    def add_worker(self, i: int, *, authority: SigningKey | None = None, **engine: Any) -> Child:
        """Write worker ``i``'s config (``engine`` overrides its engine table) and start it.

        Its quotes are signed by this network's authority, or by ``authority`` (a key the policy does not trust).
        """
        threads = max(1, (os.cpu_count() or 2) // self.workers)
        table = {
            "kind": "llamacpp",
            "model": DEFAULT_MODEL,
            "model_path": str(self.model_file),
            "threads": threads,
            "model_hash": self.model_hash,
        }
        keys_file = self.home / f"worker-{i}" / "keys.json"
        self.authority.enroll(load_or_create_node_keys(keys_file), authority)
        scheme = "wss" if self.tls else "ws"
        worker = self._trust() | {
            "proxies": [f"{scheme}://127.0.0.1:{self.proxy_port}/v1/worker/connect"],
            "slots": 2,
            "keys_file": str(keys_file),
            "dev_attestation_url": self.authority_url,
            "engines": [table | self.engine | engine, *({"threads": threads} | e for e in self.extra_engines)],
        }
        options = money_options(self.chain, self.home, f"worker-{i}")
        self._write(f"worker-{i}.toml", worker | options | self.worker_options | self.worker_overrides.get(i, {}))
        return self._spawn(f"worker-{i}", f"worker-{i}.toml")

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        steps: list[tuple[str, Callable[[], bool]]] = [
            ("proxy", lambda: _get(f"{self.proxy_url}/healthz", self._verify()) is not None),
            (
                f"{self.workers} workers attested and connected",
                lambda: (
                    len((_get(f"{self.proxy_url}/v1/directory", self._verify()) or {}).get("workers", []))
                    >= self.workers
                ),
            ),
            # /readyz, not /v1/models: it answers without an API key, which a sidecar with keys needs.
            ("client sidecar", lambda: bool((_get(f"http://127.0.0.1:{self.client_port}/readyz") or {}).get("ready"))),
        ]
        with console.status("starting cocoon…") as spinner:
            for label, ready in steps:
                spinner.update(f"waiting for {label}…")
                while not ready():
                    self.check_children()
                    if self._stop.is_set():
                        raise ChildDied("interrupted while starting")
                    if time.monotonic() > deadline:
                        raise ChildDied(f"{label} not ready after {timeout:g}s; see logs in {self.home / 'logs'}")
                    time.sleep(0.2)
                console.print(f"[green]✓[/] {label}")

    def demo(self) -> None:
        question = "What is the capital of France?"
        body: dict[str, Any] = {"max_tokens": 24, "temperature": 0}
        if self.extra_engines:
            # The instruct model chats as it was trained to.
            system = {"role": "system", "content": "Answer in one short sentence."}
            body |= {"model": SMOLLM2_MODEL, "messages": [system, {"role": "user", "content": question}]}
        else:
            # Gemma 3 270M is a small base model: one example turn shows it what a chat answer looks like.
            body |= {
                "model": DEFAULT_MODEL,
                "stop": ["."],
                "messages": [
                    {"role": "user", "content": "What is the capital of Italy?"},
                    {"role": "assistant", "content": "The capital of Italy is Rome."},
                    {"role": "user", "content": question},
                ],
            }
        started = time.monotonic()
        response = httpx.post(f"{self.base_url}/chat/completions", json=body, timeout=120)
        answer = response.json()
        if response.status_code == 401:  # the sidecar has API keys: the demo holds none
            hint = f"cocoon client keys list --config {self.home / 'client.toml'}"
            out.print(f"  demo skipped: the sidecar needs one of its API keys (`{hint}`)")
            return
        if response.status_code != 200:
            raise ChildDied(f"demo request failed: {answer}")
        usage = answer["usage"]
        out.print(
            f"[bold]demo[/] ({body['model']}, sealed to an attested worker, receipt verified, "
            f"{time.monotonic() - started:.2f}s):"
        )
        out.print(f"  > {question}")
        out.print("  < " + answer["choices"][0]["message"]["content"].strip().replace("\n", " "))
        out.print(
            f"  usage: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens, "
            f"receipt {usage['receipt_ids'][0]}"
        )
        if self.chain is not None:
            print_money_demo(self.chain, self.proxy_url, usage)

    def check_children(self) -> None:
        """Raise ChildDied, with its last log lines, if any child has exited."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise ChildDied(
                    f"{child.name} exited with code {code}; last log lines:\n" + "\n".join(child.log_tail(15))
                )

    def stop(self) -> None:
        stop_all(self.children)
        if self.children:
            console.print("stopped " + ", ".join(c.name for c in self.children))
        self.children.clear()
        self.authority.stop()
        self.authority_url = ""
        if self._lock is not None:
            os.close(self._lock)  # closing releases the lock
            self._lock = None

    def _hold_home(self) -> None:
        """Lock the state folder for this network; ``ConfigError`` naming the holder when another one runs in it."""
        if self._lock is not None:
            return
        lock = os.open(self.home / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(lock, 32).decode(errors="replace").strip() or "?"
            os.close(lock)
            raise ConfigError(
                f"another cocoon network (pid {holder}) is running in {self.home}; stop it, or start this one "
                "with another --port-base (each port base has its own state folder) or --home"
            ) from None
        os.ftruncate(lock, 0)
        os.write(lock, str(os.getpid()).encode())
        self._lock = lock

    def _check_ports(self) -> None:
        """``ConfigError`` in one line when a port this network needs is taken, before anything starts."""
        ports = {self.client_port: "client sidecar", self.proxy_port: "proxy"}
        if self.money:
            ports[self.devnet_port] = "devnet chain"
        for port, role in ports.items():
            if port_in_use(port):
                raise ConfigError(
                    f"port {port} (the {role}'s) is already in use on 127.0.0.1; stop what holds it or pass "
                    f"another --port-base (the proxy listens at +{PROXY_OFFSET}, the devnet at +{DEVNET_OFFSET})"
                )

    def _verify(self) -> ssl.SSLContext | bool:
        return trust_context(self.tls[0]) if self.tls else True

    def _trust(self) -> dict[str, str]:
        """What a worker or the sidecar needs to trust this network's proxy certificate."""
        return {"tls_ca_file": str(self.tls[0])} if self.tls else {}

    def _write(self, name: str, settings: dict[str, Any]) -> None:
        (self.home / name).write_text(tomli_w.dumps(settings))

    def _spawn(self, name: str, config: str, extra: list[str] | None = None) -> Child:
        """Start the role ``name`` names (``worker-2`` runs ``cocoon worker``) with the config file ``config``."""
        role = name.split("-")[0]
        return self._start_child(
            name, [sys.executable, "-m", "cocoon", role, "--config", str(self.home / config), *(extra or [])]
        )

    def _start_child(self, name: str, command: list[str]) -> Child:
        child = spawn(name, command, self.home / "logs" / f"{name}.log")
        self.children.append(child)
        return child


def default_home(port_base: int) -> Path:
    """The state folder of a network on ``port_base``: ``~/.cocoon/up`` for the default 8080, ``up-<port>``
    for any other, so two networks on one machine never share keys, stores or chain state."""
    return cocoon_home() / ("up" if port_base == 8080 else f"up-{port_base}")


def _get(url: str, verify: ssl.SSLContext | bool = True) -> Any:
    """The JSON body of ``GET url`` when it answers 200 in time, else None (the network is still starting)."""
    try:
        with map_http_errors(url):
            response = httpx.get(url, timeout=2, verify=verify)
    except UpstreamFailed:
        return None
    return response.json() if response.status_code == 200 else None
