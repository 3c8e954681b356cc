"""A workload's ECDSA P-256 key and its CSR, made by the `openssl` command.

The data plane does not import `cryptography` (about 10 MiB of resident memory in every
ztunnel, for a key made once a day per identity). One `openssl req` makes both: the key
goes to its stdout, never to a file, and the process runs under `trio.run_process` so the
event loop keeps serving while OpenSSL works. `-config /dev/null` keeps the host's
openssl.cnf (or $OPENSSL_CONF) from adding anything to the request.

The CSR is what controlplane/ca.py `check_csr` accepts: signed by its own P-256 key, an
empty subject, and one critical subjectAltName holding exactly one URI.
"""
from __future__ import annotations

import re

import trio

OPENSSL = "openssl"

# -addext parses its value as an OpenSSL config line: a comma would start another SAN
# ("URI:a,DNS:b") and `$` would expand a variable, so only plain URI characters pass.
_SAFE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~/%@:+-]+")
_KEY_RE = re.compile(rb"-----BEGIN PRIVATE KEY-----\n.*?-----END PRIVATE KEY-----\n", re.S)
_CSR_RE = re.compile(rb"-----BEGIN CERTIFICATE REQUEST-----\n.*?-----END CERTIFICATE REQUEST-----\n", re.S)


class KeyGenError(RuntimeError):
    """openssl is missing, failed, or printed something other than a key and a CSR."""


def openssl_req_argv(uri: str, openssl: str = OPENSSL) -> list[str]:
    if not _SAFE_URI.fullmatch(uri):
        raise ValueError(f"refusing to put {uri!r} in a CSR: a SAN URI here is scheme://path with no commas, "
                         f"spaces or `$`")
    return [openssl, "req", "-new", "-config", "/dev/null",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "-",
            "-subj", "/", "-addext", f"subjectAltName=critical,URI:{uri}", "-sha256", "-out", "-"]


def _fail(argv: list[str], why: str) -> KeyGenError:
    return KeyGenError(f"`{' '.join(argv)}` {why}")


async def new_key_and_csr(uri: str, openssl: str = OPENSSL) -> tuple[bytes, bytes]:
    """(PKCS#8 PEM private key, PEM CSR for `uri`). Raises KeyGenError naming the command."""
    argv = openssl_req_argv(uri, openssl)
    try:
        done = await trio.run_process(argv, stdin=b"", capture_stdout=True, capture_stderr=True, check=False)
    except FileNotFoundError:
        raise _fail(argv, f"could not start: no `{openssl}` on PATH; install the openssl package "
                          f"(scripts/setup does)") from None
    except OSError as exc:
        raise _fail(argv, f"could not start: {exc}") from None
    stderr = done.stderr.decode(errors="replace").strip()
    if done.returncode != 0:
        raise _fail(argv, f"exited with {done.returncode}: {stderr or '(no stderr)'}")
    key, csr = _KEY_RE.search(done.stdout), _CSR_RE.search(done.stdout)
    if key is None or csr is None:
        missing = "PKCS#8 private key" if key is None else "certificate request"
        raise _fail(argv, f"printed no {missing} (PEM) on stdout; stderr: {stderr or '(none)'}")
    return key[0], csr[0]

