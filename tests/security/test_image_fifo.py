"""An image's files are the sandbox's: a FIFO where the host expects a CA bundle must not hang a
create (and with it a thread of the server's pool) forever."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sandboxd.runtimes.local.oci.rootfs import install_ca


def test_a_fifo_in_place_of_the_ca_bundle_does_not_hang_the_host(tmp_path: Path) -> None:
    certs = tmp_path / "etc" / "ssl" / "certs"
    certs.mkdir(parents=True)
    os.mkfifo(certs / "ca-certificates.crt")
    done = threading.Event()

    def run() -> None:
        install_ca(tmp_path, b"-----BEGIN CERTIFICATE-----\n", os.getuid())
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(5), "install_ca blocked on the image's FIFO"
    bundle = certs / "ca-certificates.crt"
    assert bundle.is_file() and b"-----BEGIN CERTIFICATE-----" in bundle.read_bytes()
