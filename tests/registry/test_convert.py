"""``convert docker://...`` produces the same tree as converting the same image from an OCI
layout (the one the image was pushed from, and the one ``pull`` wrote)."""

from __future__ import annotations

from pathlib import Path

from converter.api import convert
from converter.listing import list_directory, list_tar
from converter.registry import RegistryOptions, pull

from .conftest import Env
from .servers import TcpProxy


def test_convert_registry_equals_layout(env: Env, tmp_path: Path) -> None:
    app = env.images["app"]
    convert(f"docker://{app.ref}", tmp_path / "remote.tar", flatten=True)
    convert(f"oci:{app.layout}:v1", tmp_path / "local.tar", flatten=True)
    remote = list_tar(tmp_path / "remote.tar")
    assert remote == list_tar(tmp_path / "local.tar")
    assert "etc/hello" in remote and "z.txt" in remote and "big.bin" not in remote
    # and through a layout made by pull, as an air-gapped host would
    pull(app.ref, f"oci:{tmp_path / 'carried'}")
    convert(f"oci:{tmp_path / 'carried'}:v1", tmp_path / "carried.tar", flatten=True)
    assert list_tar(tmp_path / "carried.tar") == remote


def test_convert_to_directory_with_a_dropped_connection(env: Env, cutting_proxy: TcpProxy, tmp_path: Path) -> None:
    app = env.images["app"]
    cutting_proxy.cut_response_to(app.built.layer_digests[0].encode(), 120_000)
    convert(f"docker://{cutting_proxy.netloc}/test/app:v1", tmp_path / "remote")
    convert(f"oci:{app.layout}:v1", tmp_path / "local")
    assert cutting_proxy.cuts == 1 and cutting_proxy.range_requests == 1
    assert list_directory(tmp_path / "remote") == list_directory(tmp_path / "local")


def test_convert_multiplatform(env: Env, tmp_path: Path) -> None:
    multi = env.images["multi"]
    convert(f"docker://{multi.ref}", tmp_path / "arm", platform="linux/arm/v7")
    assert (tmp_path / "arm" / "etc" / "arch").read_bytes() == b"armv7\n"


def test_convert_with_registry_options(env: Env, basic_registry, tmp_path: Path) -> None:
    convert(f"docker://{basic_registry.host}/test/app:v1", tmp_path / "out",
            registry_options=RegistryOptions(creds="alice:wonderland"))
    assert (tmp_path / "out" / "etc" / "hello").read_bytes() == b"bye\n"


def test_cli_pull_then_convert_offline(env: Env, basic_registry, tmp_path: Path) -> None:
    """The air-gapped workflow through the command line: pull with credentials into a
    layout, then convert that layout with no registry involved."""
    import os
    import subprocess
    import sys

    def rootfs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, text=True,
                              env={**os.environ, "NO_COLOR": "1"})

    layout = tmp_path / "carried"
    r = rootfs("pull", f"{basic_registry.host}/test/app:v1", "--to", f"oci:{layout}:v1", "--creds", "alice:wonderland")
    assert r.returncode == 0, r.stderr
    assert "pulled" in r.stderr and "\x1b[" not in r.stderr
    r = rootfs("convert", f"oci:{layout}:v1", "--flatten", str(tmp_path / "out.tar"), "-q")
    assert r.returncode == 0, r.stderr
    convert(f"oci:{env.images['app'].layout}:v1", tmp_path / "local.tar", flatten=True)
    assert list_tar(tmp_path / "out.tar") == list_tar(tmp_path / "local.tar")
    r = rootfs("pull", f"{basic_registry.host}/test/app:v1", "--to", f"oci:{layout}:v1")
    assert r.returncode == 9 and r.stderr.startswith("rootfs: error:") and "alice" not in r.stderr
