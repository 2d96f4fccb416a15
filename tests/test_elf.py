"""converter.elf: header, program headers and dynamic section, on host binaries (checked
against ``readelf``) and on hand-built files (32/64-bit, little/big endian, string table
through PT_LOAD or through the section headers, broken files).

``make_elf`` is also used by ``test_pathselect.py`` to build images whose dependency
structure is known exactly.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from converter.elf import (
    DF_1_NODEFLIB,
    EM_386,
    EM_AARCH64,
    EM_PPC64,
    EM_X86_64,
    ET_DYN,
    ET_EXEC,
    PT_DYNAMIC,
    PT_INTERP,
    PT_LOAD,
    ElfError,
    default_dirs,
    lib_names,
    multiarch_triplets,
    musl_arch,
    parse_elf_bytes,
    parse_elf_file,
)

IN_CI = bool(os.environ.get("CI"))

# ------------------------------------------------------------------ a tiny ELF builder


def make_elf(
    *,
    bits: int = 64,
    little: bool = True,
    machine: int = EM_X86_64,
    etype: int = ET_DYN,
    interp: Optional[bytes] = None,
    needed: tuple[bytes, ...] = (),
    soname: Optional[bytes] = None,
    rpath: Optional[bytes] = None,
    runpath: Optional[bytes] = None,
    flags_1: int = 0,
    dynamic: bool = True,
    sections: bool = True,
    strtab_in_load: bool = True,
    payload: bytes = b"",
) -> bytes:
    """A minimal but well-formed ELF file: header, PT_LOAD (the whole file at vaddr
    0x400000, unless ``strtab_in_load`` is False), PT_INTERP, PT_DYNAMIC, the dynamic
    string table and optionally section headers (null, .dynstr, .dynamic, .shstrtab)."""
    e = "<" if little else ">"
    is64 = bits == 64
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    base = 0x400000
    # string table
    strtab = bytearray(b"\0")

    def add(s: bytes) -> int:
        off = len(strtab)
        strtab.extend(s + b"\0")
        return off

    tags: list[tuple[int, int]] = []
    for n in needed:
        tags.append((1, add(n)))
    if soname is not None:
        tags.append((14, add(soname)))
    if rpath is not None:
        tags.append((15, add(rpath)))
    if runpath is not None:
        tags.append((29, add(runpath)))
    if flags_1:
        tags.append((0x6FFFFFFB, flags_1))
    phnum = 1 + (interp is not None) + (1 if dynamic else 0)
    off = ehsize + phnum * phentsize
    interp_off = off
    interp_bytes = (interp + b"\0") if interp is not None else b""
    off += len(interp_bytes)
    off = (off + 7) & ~7
    strtab_off = off
    off += len(strtab)
    off = (off + 7) & ~7
    dyn_off = off
    tags_all = tags + [(5, base + strtab_off), (10, len(strtab)), (0, 0)]
    dynfmt = e + ("QQ" if is64 else "II")
    dyn = b"".join(struct.pack(dynfmt, t, v) for t, v in tags_all)
    off += len(dyn)
    payload_off = off
    off += len(payload)
    off = (off + 7) & ~7
    shstrtab = b"\0.dynstr\0.dynamic\0.shstrtab\0"
    shstr_off = off
    off += len(shstrtab)
    off = (off + 7) & ~7
    shoff = off if sections else 0
    shnum = 4 if sections else 0
    total = off + shnum * shentsize

    out = bytearray(total)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1, 0]) + bytes(8)
    if is64:
        hdr = ident + struct.pack(e + "HHIQQQIHHHHHH", etype, machine, 1, 0, ehsize, shoff, 0, ehsize, phentsize, phnum, shentsize, shnum, 3 if sections else 0)
    else:
        hdr = ident + struct.pack(e + "HHIIIIIHHHHHH", etype, machine, 1, 0, ehsize, shoff, 0, ehsize, phentsize, phnum, shentsize, shnum, 3 if sections else 0)
    out[: len(hdr)] = hdr
    phdrs = []
    load_size = total if strtab_in_load else ehsize
    phdrs.append((PT_LOAD, 0, base, load_size, load_size, 5))
    if interp is not None:
        phdrs.append((PT_INTERP, interp_off, base + interp_off, len(interp_bytes), len(interp_bytes), 4))
    if dynamic:
        phdrs.append((PT_DYNAMIC, dyn_off, base + dyn_off, len(dyn), len(dyn), 6))
    pos = ehsize
    for p_type, p_off, p_vaddr, p_filesz, p_memsz, p_flags in phdrs:
        if is64:
            ph = struct.pack(e + "IIQQQQQQ", p_type, p_flags, p_off, p_vaddr, p_vaddr, p_filesz, p_memsz, 8)
        else:
            ph = struct.pack(e + "IIIIIIII", p_type, p_off, p_vaddr, p_vaddr, p_filesz, p_memsz, p_flags, 4)
        out[pos:pos + phentsize] = ph
        pos += phentsize
    out[interp_off:interp_off + len(interp_bytes)] = interp_bytes
    out[strtab_off:strtab_off + len(strtab)] = strtab
    out[dyn_off:dyn_off + len(dyn)] = dyn
    out[payload_off:payload_off + len(payload)] = payload
    out[shstr_off:shstr_off + len(shstrtab)] = shstrtab
    if sections:
        shdrs = [
            (0, 0, 0, 0, 0, 0, 0, 0),
            (1, 3, base + strtab_off, strtab_off, len(strtab), 0, 0, 1),  # .dynstr
            (9, 6, base + dyn_off, dyn_off, len(dyn), 1, 0, 16 if is64 else 8),  # .dynamic, link -> 1
            (18, 3, 0, shstr_off, len(shstrtab), 0, 0, 1),  # .shstrtab
        ]
        pos = shoff
        for name, typ, addr, offset, size, link, info, entsize in shdrs:
            if is64:
                sh = struct.pack(e + "IIQQQQIIQQ", name, typ, 0, addr, offset, size, link, info, 8, entsize)
            else:
                sh = struct.pack(e + "IIIIIIIIII", name, typ, 0, addr, offset, size, link, info, 4, entsize)
            out[pos:pos + shentsize] = sh
            pos += shentsize
    return bytes(out)


# ------------------------------------------------------------------ hand-built files


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("little", [True, False])
def test_hand_built_all_layouts(bits: int, little: bool) -> None:
    machine = EM_X86_64 if bits == 64 and little else (EM_PPC64 if bits == 64 else EM_386)
    data = make_elf(
        bits=bits, little=little, machine=machine, etype=ET_EXEC, interp=b"/lib/ld-test.so.1",
        needed=(b"libfoo.so.1", b"libbar.so.2"), soname=b"prog", rpath=b"/r1:/r2", runpath=b"$ORIGIN/../lib",
        flags_1=DF_1_NODEFLIB,
    )
    info = parse_elf_bytes(data)
    assert info is not None
    assert (info.elf_class, info.little_endian, info.machine, info.type) == (bits, little, machine, ET_EXEC)
    assert info.interp == b"/lib/ld-test.so.1"
    assert info.dynamic
    assert info.needed == [b"libfoo.so.1", b"libbar.so.2"]
    assert info.soname == b"prog"
    assert info.rpath == b"/r1:/r2"
    assert info.runpath == b"$ORIGIN/../lib"
    assert info.nodeflib
    assert [p.type for p in info.phdrs] == [PT_LOAD, PT_INTERP, PT_DYNAMIC]


@pytest.mark.parametrize("bits", [32, 64])
def test_strtab_through_sections_when_not_mapped(bits: int) -> None:
    """DT_STRTAB outside every PT_LOAD: the .dynamic section's linked string table."""
    data = make_elf(bits=bits, needed=(b"libx.so",), soname=b"liby.so", strtab_in_load=False)
    info = parse_elf_bytes(data)
    assert info is not None and info.needed == [b"libx.so"] and info.soname == b"liby.so"


def test_no_string_table_at_all_is_an_error() -> None:
    data = make_elf(needed=(b"libx.so",), strtab_in_load=False, sections=False)
    with pytest.raises(ElfError, match="string table"):
        parse_elf_bytes(data)


def test_static_and_relocatable_files() -> None:
    info = parse_elf_bytes(make_elf(etype=ET_EXEC, dynamic=False))
    assert info is not None and not info.dynamic and info.needed == [] and info.interp is None
    rel = parse_elf_bytes(make_elf(etype=1, dynamic=False))
    assert rel is not None and not rel.is_loadable


def test_not_elf_and_broken_files() -> None:
    assert parse_elf_bytes(b"") is None
    assert parse_elf_bytes(b"#!/bin/sh\necho hi\n" * 4) is None
    assert parse_elf_bytes(b"\x7fEL") is None
    good = make_elf(needed=(b"libx.so",), interp=b"/ld.so")
    with pytest.raises(ElfError):
        parse_elf_bytes(good[:40])  # header cut short
    with pytest.raises(ElfError):
        parse_elf_bytes(good[:100])  # program headers cut short
    bad_class = bytearray(good)
    bad_class[4] = 7
    with pytest.raises(ElfError, match="class"):
        parse_elf_bytes(bytes(bad_class))
    # a huge program header count is refused without reading it
    huge = bytearray(good)
    struct.pack_into("<H", huge, 56, 0xFFF0)
    with pytest.raises(ElfError):
        parse_elf_bytes(bytes(huge))
    # a NEEDED offset past the string table
    info = parse_elf_bytes(good)
    assert info is not None
    dyn = next(p for p in info.phdrs if p.type == PT_DYNAMIC)
    entries = [struct.unpack_from("<QQ", good, dyn.offset + 16 * i) for i in range(dyn.filesz // 16)]
    strsz_at = dyn.offset + 16 * [tag for tag, _ in entries].index(10)  # DT_STRSZ
    broken = bytearray(good)
    struct.pack_into("<Q", broken, strsz_at + 8, 1)  # shrink the table to one byte
    with pytest.raises(ElfError, match="string"):
        parse_elf_bytes(bytes(broken))


def test_loader_conventions() -> None:
    x86 = parse_elf_bytes(make_elf())
    assert x86 is not None
    assert multiarch_triplets(x86) == ["x86_64-linux-gnu"]
    assert default_dirs(x86) == [
        "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
    ]
    assert lib_names(x86)[:2] == ["lib/x86_64-linux-gnu", "lib64"]
    i386 = parse_elf_bytes(make_elf(bits=32, machine=EM_386))
    assert i386 is not None and default_dirs(i386)[:2] == ["/lib/i386-linux-gnu", "/usr/lib/i386-linux-gnu"]
    arm = parse_elf_bytes(make_elf(machine=EM_AARCH64))
    assert arm is not None and multiarch_triplets(arm) == ["aarch64-linux-gnu"]
    assert musl_arch(b"/lib/ld-musl-x86_64.so.1") == "x86_64"
    assert musl_arch(b"/lib64/ld-linux-x86-64.so.2") is None


# ------------------------------------------------------------------ host files vs readelf

READELF = shutil.which("readelf")


def _readelf(path: str) -> dict:
    out = subprocess.run([READELF, "-h", "-l", "-d", "-W", path], capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"}).stdout
    res: dict = {"needed": [], "soname": None, "rpath": None, "runpath": None, "interp": None, "phdr_types": []}
    res["class"] = 64 if re.search(r"Class:\s+ELF64", out) else 32
    res["little"] = "little endian" in out
    res["type"] = re.search(r"Type:\s+(\w+)", out).group(1)  # type: ignore[union-attr]
    m = re.search(r"\[Requesting program interpreter: (.*)\]", out)
    if m:
        res["interp"] = m.group(1).encode()
    in_ph = False
    for line in out.splitlines():
        if line.strip().startswith("Type") and "Offset" in line:
            in_ph = True
            continue
        if in_ph:
            if not line.strip() or line.strip().startswith("Section to Segment"):
                in_ph = False
                continue
            word = line.split()[0]
            if word.startswith("["):
                continue
            res["phdr_types"].append(word)
        m = re.search(r"\((NEEDED|SONAME|RPATH|RUNPATH)\)\s+.*\[(.*)\]", line)
        if m:
            key = m.group(1).lower()
            if key == "needed":
                res["needed"].append(m.group(2).encode())
            else:
                res[key] = m.group(2).encode()
    return res


_PT_NAMES = {0: "NULL", 1: "LOAD", 2: "DYNAMIC", 3: "INTERP", 4: "NOTE", 6: "PHDR", 7: "TLS",
             0x6474E550: "GNU_EH_FRAME", 0x6474E551: "GNU_STACK", 0x6474E552: "GNU_RELRO", 0x6474E553: "GNU_PROPERTY"}


def host_elf_files(tmp_path: Path) -> list[str]:
    """Some dynamically linked host files, plus programs compiled here with RPATH and
    RUNPATH (when gcc is there)."""
    files = []
    for cand in ["/bin/ls", "/usr/bin/env", "/bin/sh", os.path.realpath("/usr/bin/python3"), "/usr/sbin/ldconfig"]:
        if os.path.isfile(cand):
            files.append(os.path.realpath(cand))
    for lib in ("libc.so.6", "libselinux.so.1", "libz.so.1"):
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
            if os.path.isfile(os.path.join(d, lib)):
                files.append(os.path.realpath(os.path.join(d, lib)))
                break
    gcc = shutil.which("gcc")
    if gcc:
        src = tmp_path / "p.c"
        src.write_text("int main(void){return 0;}\n")
        for flag, name in (("--enable-new-dtags", "runpath"), ("--disable-new-dtags", "rpath")):
            out = tmp_path / name
            subprocess.run([gcc, "-o", str(out), str(src), f"-Wl,{flag},-rpath,$ORIGIN/../lib:/opt/x/$LIB"], check=True)
            files.append(str(out))
    return sorted(set(files))


@pytest.mark.skipif(READELF is None and not IN_CI, reason="readelf (binutils) not installed")
def test_host_binaries_match_readelf(tmp_path: Path) -> None:
    files = host_elf_files(tmp_path)
    assert len(files) >= 3
    checked_rpath = checked_runpath = False
    for path in files:
        want = _readelf(path)
        info = parse_elf_file(path)
        assert info is not None, path
        assert info.elf_class == want["class"], path
        assert info.little_endian == want["little"], path
        assert {"EXEC": ET_EXEC, "DYN": ET_DYN}[want["type"]] == info.type, path
        assert info.interp == want["interp"], path
        assert info.needed == want["needed"], path
        assert info.soname == want["soname"], path
        assert info.rpath == want["rpath"], path
        assert info.runpath == want["runpath"], path
        assert [_PT_NAMES.get(p.type, hex(p.type)) for p in info.phdrs] == want["phdr_types"], path
        checked_rpath |= info.rpath is not None
        checked_runpath |= info.runpath is not None
    if shutil.which("gcc"):
        assert checked_rpath and checked_runpath


def test_host_machine_matches_platform() -> None:
    import platform

    info = parse_elf_file(os.path.realpath("/bin/ls"))
    assert info is not None
    expect = {"x86_64": EM_X86_64, "aarch64": EM_AARCH64}.get(platform.machine())
    if expect is not None:
        assert info.machine == expect
