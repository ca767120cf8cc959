"""Starts a throwaway LNbits 1.6.2 (FakeWallet backend) on 127.0.0.1 and sets it up for tests.

Run with the interpreter of the venv built from requirements.txt (scripts/test makes it as
target/venv-l402). It picks a free port, keeps its data in a temporary folder, creates the
super user, two wallets ("payer" and "payee") and funds the payer, then prints ONE line of JSON
on stdout:

    {"url": "http://127.0.0.1:PORT", "payer": {"id", "adminkey", "inkey"},
     "payee": {"id", "adminkey", "inkey"}, "funded_sats": N}

It runs until its stdin is closed (the test dropped it) or it gets SIGTERM, then stops LNbits
and removes the data folder. LNbits' own log goes to stderr.

FakeWallet issues real signed BOLT11 invoices (mainnet "lnbc" prefix, signed with a key
derived from FAKE_WALLET_SECRET) and settles payments between wallets of this one instance,
returning the real preimage. Nothing leaves the machine.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

FUNDED_SATS = int(os.environ.get("LNBITS_FUND_SATS", "1000000"))
READY_TIMEOUT_S = 90


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, method, path, body=None, headers=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None


def main():
    # Found without importing: importing lnbits reads its settings, which writes
    # ./data/.lnbits_auth_key into the current directory (the repository).
    import importlib.util

    package_dir = pathlib.Path(importlib.util.find_spec("lnbits").origin).parent
    work = pathlib.Path(tempfile.mkdtemp(prefix="tollgate-lnbits-"))
    data = work / "data"
    data.mkdir()
    # LNbits mounts ./lnbits/static relative to its working directory.
    (work / "lnbits").symlink_to(package_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        {
            "LNBITS_BACKEND_WALLET_CLASS": "FakeWallet",
            "FAKE_WALLET_SECRET": "tollgate-tests",
            "LNBITS_ADMIN_UI": "true",
            "LNBITS_DATA_FOLDER": str(data),
            "LNBITS_EXTENSIONS_DEFAULT_INSTALL": "[]",
            "LNBITS_EXCHANGE_RATE_PROVIDERS": "[]",
            "AUTH_ALLOWED_METHODS": '["user-id-only","username-password"]',
            "LNBITS_RESERVE_FEE_MIN": "0",
            "LNBITS_RESERVE_FEE_PERCENT": "0",
            "DEBUG": "false",
        }
    )
    lnbits_bin = pathlib.Path(sys.executable).parent / "lnbits"
    child = subprocess.Popen(
        [str(lnbits_bin), "--host", "127.0.0.1", "--port", str(port)],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        stderr=sys.stderr,
        start_new_session=True,
    )

    def stop(*_):
        if child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait(timeout=5)
            except Exception:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except Exception:
                    pass
        shutil.rmtree(work, ignore_errors=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    try:
        deadline = time.time() + READY_TIMEOUT_S
        while True:
            if child.poll() is not None:
                raise RuntimeError(f"LNbits exited with {child.returncode}")
            try:
                # Before setup every page redirects to /first_install: any answer means up.
                with urllib.request.urlopen(url + "/api/v1/health", timeout=2):
                    break
            except urllib.error.HTTPError:
                break
            except Exception:
                if time.time() > deadline:
                    raise RuntimeError("LNbits did not answer /api/v1/health in time")
                time.sleep(0.3)

        password = "tollgate-test-password"
        call(
            url,
            "PUT",
            "/api/v1/auth/first_install",
            {"username": "admin", "password": password, "password_repeat": password},
        )
        auth = call(url, "POST", "/api/v1/auth", {"username": "admin", "password": password})
        bearer = {"Authorization": f"Bearer {auth['access_token']}"}
        wallets = {}
        for name in ("payer", "payee"):
            w = call(url, "POST", "/api/v1/account", {"name": name})
            wallets[name] = {"id": w["id"], "adminkey": w["adminkey"], "inkey": w["inkey"]}
        call(
            url,
            "PUT",
            "/users/api/v1/balance",
            {"id": wallets["payer"]["id"], "amount": FUNDED_SATS},
            headers=bearer,
        )
    except Exception as e:
        print(f"start_lnbits: {e}", file=sys.stderr, flush=True)
        stop()

    print(
        json.dumps({"url": url, **wallets, "funded_sats": FUNDED_SATS}),
        flush=True,
    )

    # Stop when the parent closes our stdin (or dies), or when LNbits dies.
    def watch_child():
        child.wait()
        print(f"start_lnbits: LNbits exited with {child.returncode}", file=sys.stderr)
        stop()

    threading.Thread(target=watch_child, daemon=True).start()
    try:
        sys.stdin.read()
    finally:
        stop()


if __name__ == "__main__":
    main()
