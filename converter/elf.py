"""A small, bounded ELF reader: just what finding shared-library dependencies needs.

It reads the ELF header, the program headers (``PT_INTERP``, ``PT_DYNAMIC``, ``PT_LOAD``)
and the dynamic section (``DT_NEEDED``, ``DT_SONAME``, ``DT_RPATH``, ``DT_RUNPATH``,
``DT_FLAGS_1``), 32- and 64-bit, little- and big-endian.  Strings come from ``DT_STRTAB``
mapped to a file offset through the ``PT_LOAD`` segments (what the dynamic loader uses);
when that fails, from the string table the ``.dynamic`` section header links to.

Nothing is executed and nothing is trusted: every count, offset and size is checked
against the file size and capped, so a hostile file costs at most a few megabytes of
reads and yields ``None`` or an :class:`ElfError` rather than a crash.

Bytes are read through a ``read(offset, size) -> bytes`` callable, so the same code reads
host files (tests) and files inside an image plan (``converter.pathselect``).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

ELF_MAGIC = b"\x7fELF"

ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2

ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
SHT_STRTAB, SHT_DYNAMIC = 3, 6
PN_XNUM = 0xFFFF

DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
DT_FLAGS = 30
DT_FLAGS_1 = 0x6FFFFFFB
DF_1_NODEFLIB = 0x800
DF_1_PIE = 0x08000000

# e_machine values we know the library directories of
EM_386 = 3
EM_MIPS = 8
EM_PPC = 20
EM_PPC64 = 21
EM_S390 = 22
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243
EM_LOONGARCH = 258
EF_ARM_ABI_FLOAT_HARD = 0x400

#: caps that bound the work one file can cause
MAX_PHNUM = 4096
MAX_SHNUM = 65536
MAX_DYN_ENTRIES = 1 << 16
MAX_STRTAB = 4 << 20
MAX_STRING = 4096
MAX_INTERP = 4096

Reader = Callable[[int, int], bytes]


class ElfError(ValueError):
    """The file starts like an ELF file but its structure is broken."""


@dataclass
class ProgramHeader:
    type: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass
class ElfInfo:
    """What the dynamic loader cares about in one ELF file."""

    elf_class: int  # 32 or 64
    little_endian: bool
    machine: int
    type: int  # ET_EXEC, ET_DYN, ...
    osabi: int = 0
    flags: int = 0  # e_flags
    phdrs: list[ProgramHeader] = field(default_factory=list)
    interp: Optional[bytes] = None
    dynamic: bool = False  # has PT_DYNAMIC
    needed: list[bytes] = field(default_factory=list)
    soname: Optional[bytes] = None
    rpath: Optional[bytes] = None
    runpath: Optional[bytes] = None
    flags_1: int = 0

    @property
    def is_loadable(self) -> bool:
        """An executable or a shared object (what the loader maps)."""
        return self.type in (ET_EXEC, ET_DYN)

    @property
    def nodeflib(self) -> bool:
        return bool(self.flags_1 & DF_1_NODEFLIB)

    def abi_key(self) -> tuple[int, bool, int]:
        """What a library must share with its user to be loadable into the same process."""
        return (self.elf_class, self.little_endian, self.machine)


def is_elf(head: bytes) -> bool:
    return head[:4] == ELF_MAGIC


def parse_elf(read: Reader, size: int) -> Optional[ElfInfo]:
    """Parse the file of ``size`` bytes that ``read`` gives.  ``None`` when it is not an
    ELF file at all; :class:`ElfError` when it is one but broken."""
    if size < 16:
        return None
    ident = _read_exact(read, 0, 16, size)
    if ident[:4] != ELF_MAGIC:
        return None
    cls, data = ident[4], ident[5]
    if cls not in (ELFCLASS32, ELFCLASS64) or data not in (ELFDATA2LSB, ELFDATA2MSB):
        raise ElfError(f"unknown ELF class {cls} or data encoding {data}")
    is64 = cls == ELFCLASS64
    e = "<" if data == ELFDATA2LSB else ">"
    if is64:
        hdr = _read_exact(read, 0, 64, size)
        (e_type, e_machine, _ver, _entry, e_phoff, e_shoff, e_flags, _ehsize, e_phentsize, e_phnum,
         e_shentsize, e_shnum, _shstrndx) = struct.unpack_from(e + "HHIQQQIHHHHHH", hdr, 16)
    else:
        hdr = _read_exact(read, 0, 52, size)
        (e_type, e_machine, _ver, _entry, e_phoff, e_shoff, e_flags, _ehsize, e_phentsize, e_phnum,
         e_shentsize, e_shnum, _shstrndx) = struct.unpack_from(e + "HHIIIIIHHHHHH", hdr, 16)
    info = ElfInfo(
        elf_class=64 if is64 else 32, little_endian=data == ELFDATA2LSB, machine=e_machine, type=e_type,
        osabi=ident[7], flags=e_flags,
    )
    shdrs = None
    if e_phnum == PN_XNUM and e_shoff:
        # the real count is in section 0's sh_info
        shdrs = _section_headers(read, size, e, is64, e_shoff, e_shentsize, 1)
        e_phnum = shdrs[0][7] if shdrs else 0
    info.phdrs = _program_headers(read, size, e, is64, e_phoff, e_phentsize, e_phnum)
    dyn_ph = None
    for ph in info.phdrs:
        if ph.type == PT_INTERP and info.interp is None:
            if ph.filesz > MAX_INTERP:
                raise ElfError(f"PT_INTERP of {ph.filesz} bytes")
            raw = _read_exact(read, ph.offset, ph.filesz, size)
            info.interp = raw.split(b"\0", 1)[0]
        elif ph.type == PT_DYNAMIC and dyn_ph is None:
            dyn_ph = ph
    if dyn_ph is None:
        return info
    info.dynamic = True
    entsize = 16 if is64 else 8
    count = min(dyn_ph.filesz // entsize, MAX_DYN_ENTRIES)
    raw = _read_exact(read, dyn_ph.offset, count * entsize, size)
    fmt = e + ("QQ" if is64 else "II")
    tags: list[tuple[int, int]] = []
    for tag, val in struct.iter_unpack(fmt, raw):
        if tag == DT_NULL:
            break
        tags.append((tag, val))
    strtab_addr = strsz = None
    for tag, val in tags:
        if tag == DT_STRTAB:
            strtab_addr = val
        elif tag == DT_STRSZ:
            strsz = val
        elif tag == DT_FLAGS_1:
            info.flags_1 = val
    strtab = None
    if strtab_addr is not None:
        off = _vaddr_to_offset(info.phdrs, strtab_addr)
        if off is not None and off < size:
            length = min(strsz if strsz is not None else MAX_STRTAB, MAX_STRTAB, size - off)
            strtab = read(off, length)
    if strtab is None:
        strtab = _strtab_from_sections(read, size, e, is64, e_shoff, e_shentsize, e_shnum, dyn_ph.offset, shdrs)
    if strtab is None:
        if any(tag in (DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH) for tag, _ in tags):
            raise ElfError("dynamic string table not found")
        return info
    for tag, val in tags:
        if tag == DT_NEEDED:
            info.needed.append(_string(strtab, val))
        elif tag == DT_SONAME:
            info.soname = _string(strtab, val)
        elif tag == DT_RPATH:
            info.rpath = _string(strtab, val)
        elif tag == DT_RUNPATH:
            info.runpath = _string(strtab, val)
    return info


def parse_elf_file(path: str | os.PathLike[str]) -> Optional[ElfInfo]:
    """:func:`parse_elf` on a host file (tests, tools)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        return parse_elf(lambda off, n: os.pread(fd, n, off), size)
    finally:
        os.close(fd)


def parse_elf_bytes(data: bytes) -> Optional[ElfInfo]:
    return parse_elf(lambda off, n: data[off:off + n], len(data))


# ----------------------------------------------------------------------------- helpers


def _read_exact(read: Reader, offset: int, length: int, size: int) -> bytes:
    if offset < 0 or length < 0 or offset + length > size:
        raise ElfError(f"{length} bytes at offset {offset} are past the end of the file ({size} bytes)")
    data = read(offset, length)
    if len(data) != length:
        raise ElfError(f"short read: {len(data)} of {length} bytes at offset {offset}")
    return data


def _program_headers(read: Reader, size: int, e: str, is64: bool, phoff: int, phentsize: int, phnum: int) -> list[ProgramHeader]:
    if not phnum:
        return []
    want = 56 if is64 else 32
    if phentsize < want:
        raise ElfError(f"program header entry size {phentsize} is smaller than {want}")
    if phnum > MAX_PHNUM:
        raise ElfError(f"{phnum} program headers (more than {MAX_PHNUM})")
    raw = _read_exact(read, phoff, phentsize * phnum, size)
    out = []
    for i in range(phnum):
        base = i * phentsize
        if is64:
            p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz, p_memsz, _al = struct.unpack_from(e + "IIQQQQQQ", raw, base)
        else:
            p_type, p_offset, p_vaddr, _pa, p_filesz, p_memsz, p_flags, _al = struct.unpack_from(e + "IIIIIIII", raw, base)
        out.append(ProgramHeader(p_type, p_offset, p_vaddr, p_filesz, p_memsz, p_flags))
    return out


def _section_headers(read: Reader, size: int, e: str, is64: bool, shoff: int, shentsize: int, shnum: int) -> list[tuple]:
    """``(name, type, flags, addr, offset, size, link, info)`` per section."""
    if not shoff or not shnum:
        return []
    want = 64 if is64 else 40
    if shentsize < want or shnum > MAX_SHNUM:
        return []
    try:
        raw = _read_exact(read, shoff, shentsize * shnum, size)
    except ElfError:
        return []
    out = []
    for i in range(shnum):
        base = i * shentsize
        if is64:
            out.append(struct.unpack_from(e + "IIQQQQII", raw, base))
        else:
            out.append(struct.unpack_from(e + "IIIIIIII", raw, base))
    return out


def _strtab_from_sections(read: Reader, size: int, e: str, is64: bool, shoff: int, shentsize: int, shnum: int,
                          dyn_offset: int, shdrs: Optional[list[tuple]]) -> Optional[bytes]:
    if shnum == 0 and shdrs:
        shnum = shdrs[0][5]  # e_shnum overflow: the real count is section 0's sh_size
    sections = _section_headers(read, size, e, is64, shoff, shentsize, shnum)
    for sec in sections:
        if sec[1] == SHT_DYNAMIC and sec[4] == dyn_offset:
            link = sec[6]
            if 0 < link < len(sections) and sections[link][1] == SHT_STRTAB:
                off, length = sections[link][4], sections[link][5]
                if off < size:
                    return read(off, min(length, MAX_STRTAB, size - off))
    return None


def _vaddr_to_offset(phdrs: list[ProgramHeader], addr: int) -> Optional[int]:
    for ph in phdrs:
        if ph.type == PT_LOAD and ph.vaddr <= addr < ph.vaddr + ph.filesz:
            return ph.offset + (addr - ph.vaddr)
    return None


def _string(strtab: bytes, offset: int) -> bytes:
    if offset >= len(strtab):
        raise ElfError(f"string offset {offset} is outside the dynamic string table ({len(strtab)} bytes)")
    end = strtab.find(b"\0", offset, offset + MAX_STRING + 1)
    if end < 0:
        raise ElfError(f"unterminated string at offset {offset} of the dynamic string table")
    return strtab[offset:end]


# ------------------------------------------------------------------ loader conventions


def multiarch_triplets(info: ElfInfo) -> list[str]:
    """Debian multiarch directory names for this file's ABI (``x86_64-linux-gnu``...)."""
    m, is64, le = info.machine, info.elf_class == 64, info.little_endian
    if m == EM_X86_64:
        return ["x86_64-linux-gnu"] if is64 else ["x86_64-linux-gnux32"]
    if m == EM_386:
        return ["i386-linux-gnu"]
    if m == EM_AARCH64:
        return ["aarch64-linux-gnu"] if le else ["aarch64_be-linux-gnu"]
    if m == EM_ARM:
        return ["arm-linux-gnueabihf"] if info.flags & EF_ARM_ABI_FLOAT_HARD else ["arm-linux-gnueabi", "arm-linux-gnueabihf"]
    if m == EM_PPC64:
        return ["powerpc64le-linux-gnu"] if le else ["powerpc64-linux-gnu"]
    if m == EM_PPC:
        return ["powerpc-linux-gnu"]
    if m == EM_S390:
        return ["s390x-linux-gnu"] if is64 else ["s390-linux-gnu"]
    if m == EM_RISCV:
        return ["riscv64-linux-gnu"] if is64 else ["riscv32-linux-gnu"]
    if m == EM_LOONGARCH:
        return ["loongarch64-linux-gnu"]
    if m == EM_MIPS:
        if is64:
            return ["mips64el-linux-gnuabi64"] if le else ["mips64-linux-gnuabi64"]
        return ["mipsel-linux-gnu"] if le else ["mips-linux-gnu"]
    return []


def platform_names(info: ElfInfo) -> list[str]:
    """Candidate values of ``$PLATFORM`` (the AT_PLATFORM string) for this ABI."""
    m, is64 = info.machine, info.elf_class == 64
    names = {
        EM_X86_64: ["x86_64"] if is64 else ["x86_64"],
        EM_386: ["i686", "i586", "i486", "i386"],
        EM_AARCH64: ["aarch64"],
        EM_ARM: ["v7l", "v8l", "v6l", "v5l"],
        EM_PPC64: ["power9", "power8", "power10", "ppc64le", "ppc64"],
        EM_PPC: ["ppc"],
        EM_S390: ["z900", "z196", "zEC12", "z13", "z14", "z15"],
        EM_RISCV: ["riscv64"] if is64 else ["riscv32"],
        EM_LOONGARCH: ["loongarch64"],
        EM_MIPS: ["mips64"] if is64 else ["mips"],
    }
    return names.get(m, [])


def lib_names(info: ElfInfo) -> list[str]:
    """Candidate values of ``$LIB`` (``lib64`` on Fedora-like systems, ``lib/<triplet>``
    on Debian, ``lib`` elsewhere)."""
    out = [f"lib/{t}" for t in multiarch_triplets(info)]
    out += ["lib64"] if info.elf_class == 64 else ["lib32"]
    out.append("lib")
    return out


def default_dirs(info: ElfInfo) -> list[str]:
    """The loader's built-in search directories for this ABI (glibc on Debian/Fedora/
    Arch alike: the multiarch directories, then ``lib64``/``lib32``, then ``lib``)."""
    out = []
    for t in multiarch_triplets(info):
        out += [f"/lib/{t}", f"/usr/lib/{t}"]
    if info.elf_class == 64:
        out += ["/lib64", "/usr/lib64"]
    else:
        out += ["/lib32", "/usr/lib32"]
    out += ["/lib", "/usr/lib"]
    return out


_MUSL_ARCH_DEFAULT = ["/lib", "/usr/local/lib", "/usr/lib"]


def musl_arch(interp: Optional[bytes]) -> Optional[str]:
    """``x86_64`` for ``/lib/ld-musl-x86_64.so.1``; None when not musl's loader."""
    if not interp:
        return None
    base = interp.rsplit(b"/", 1)[-1]
    if base.startswith(b"ld-musl-") and base.endswith(b".so.1"):
        return base[len(b"ld-musl-"):-len(b".so.1")].decode("ascii", "replace")
    return None


def musl_default_dirs() -> list[str]:
    return list(_MUSL_ARCH_DEFAULT)
