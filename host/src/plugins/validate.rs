//! Structural check of a plugin library *before* it is mapped.
//!
//! The dynamic loader maps a library's `PT_LOAD` segments with `mmap`; a file that ends inside
//! one of them (an interrupted copy, a full disk) maps without complaint, and the first touch of
//! a page past the end of the file raises SIGBUS in whatever process loaded it. The loader
//! itself touches those pages (relocations, `.init_array`), so `dlopen` kills the host before
//! abi_stable sees the library. Checking the headers against the file length first turns that
//! crash into a [`super::LoadFailure`] naming the file, while the other libraries still load.
//!
//! On ELF platforms (Linux, the BSDs) the check reads the file with the `object` crate: the ELF
//! identity must match this host (class, byte order, machine), the file must be a shared object,
//! every `PT_LOAD` segment's file range and the program and section header tables must lie
//! within the file, and a `PT_DYNAMIC` segment must exist. Elsewhere (Mach-O, PE) only an empty
//! file is refused; damage the check cannot see is caught by the probe process
//! ([`super::probe`]).

/// Checks `bytes`, the whole content of a library file, for damage that would crash the process
/// mapping it. `Err` holds the reason, in words (without the path, which the caller adds).
pub fn check_library_image(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the file is empty (an interrupted copy?)".into());
    }
    #[cfg(all(unix, not(target_vendor = "apple")))]
    {
        elf::check(bytes)
    }
    #[cfg(not(all(unix, not(target_vendor = "apple"))))]
    {
        Ok(())
    }
}

#[cfg(all(unix, not(target_vendor = "apple")))]
mod elf {
    use object::elf::{self as e, FileHeader32, FileHeader64};
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::{Endianness, ReadRef};

    const TRUNCATED_HINT: &str = "(an interrupted copy?)";

    /// The ELF checks; see the module docs.
    pub fn check(bytes: &[u8]) -> Result<(), String> {
        if bytes.len() < 4 || bytes[..4] != e::ELFMAG {
            return Err(format!(
                "not an ELF shared library: the file does not start with the ELF magic number \
                 (it has {} bytes; a damaged or zeroed header?)",
                bytes.len()
            ));
        }
        if cfg!(target_pointer_width = "64") {
            check_as::<FileHeader64<Endianness>>(bytes)
        } else {
            check_as::<FileHeader32<Endianness>>(bytes)
        }
    }

    /// The machine this host was built for, when known.
    fn host_machine() -> Option<e::Machine> {
        if cfg!(target_arch = "x86_64") {
            Some(e::EM_X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(e::EM_AARCH64)
        } else if cfg!(target_arch = "x86") {
            Some(e::EM_386)
        } else if cfg!(target_arch = "arm") {
            Some(e::EM_ARM)
        } else if cfg!(any(target_arch = "riscv64", target_arch = "riscv32")) {
            Some(e::EM_RISCV)
        } else {
            None
        }
    }

    fn check_as<H: FileHeader<Endian = Endianness>>(bytes: &[u8]) -> Result<(), String> {
        let len = bytes.len() as u64;
        let class = e::FileClass(bytes.get(4).copied().unwrap_or(0));
        let want_class = if cfg!(target_pointer_width = "64") {
            e::ELFCLASS64
        } else {
            e::ELFCLASS32
        };
        if class != want_class {
            let what = match class {
                e::ELFCLASS32 => "a 32-bit library".to_string(),
                e::ELFCLASS64 => "a 64-bit library".to_string(),
                other => format!("damaged ELF header (class byte {})", other.0),
            };
            return Err(format!(
                "{what}: this host loads {}-bit libraries",
                usize::BITS
            ));
        }
        let header = H::parse(bytes).map_err(|err| {
            format!("damaged ELF header ({err}; the file has {len} bytes {TRUNCATED_HINT})")
        })?;
        let endian = header
            .endian()
            .map_err(|err| format!("damaged ELF header: {err}"))?;
        let native = if cfg!(target_endian = "little") {
            Endianness::Little
        } else {
            Endianness::Big
        };
        if endian != native {
            return Err(format!(
                "wrong byte order {endian:?}: this host is {native:?}-endian"
            ));
        }
        if header.e_type(endian) != e::ET_DYN {
            return Err(format!(
                "not a shared library (ELF type {:?}, expected a shared object)",
                header.e_type(endian)
            ));
        }
        if let Some(want) = host_machine()
            && header.e_machine(endian) != want
        {
            return Err(format!(
                "built for another machine (ELF machine {:?}, this host is {})",
                header.e_machine(endian),
                std::env::consts::ARCH
            ));
        }
        let phdrs = header.program_headers(endian, bytes).map_err(|err| {
            let phoff: u64 = header.e_phoff(endian).into();
            let need = phoff.saturating_add(
                u64::from(header.e_phnum(endian)) * size_of::<H::ProgramHeader>() as u64,
            );
            if need > len {
                truncated("the program header table", need, len)
            } else {
                format!("damaged program header table: {err}")
            }
        })?;
        let mut dynamic = false;
        for (i, ph) in phdrs.iter().enumerate() {
            let ty = ph.p_type(endian);
            if ty != e::PT_LOAD && ty != e::PT_DYNAMIC {
                continue;
            }
            let (offset, size) = ph.file_range(endian);
            let end = offset
                .checked_add(size)
                .ok_or_else(|| format!("damaged program header {i}: its file range overflows"))?;
            if end > len {
                let what = if ty == e::PT_LOAD {
                    format!("loaded segment {i}")
                } else {
                    format!("the dynamic section (program header {i})")
                };
                return Err(truncated(&what, end, len));
            }
            dynamic |= ty == e::PT_DYNAMIC && size > 0;
        }
        if !phdrs.iter().any(|ph| ph.p_type(endian) == e::PT_LOAD) {
            return Err("damaged: no loadable segment (PT_LOAD) in its program headers".into());
        }
        if !dynamic {
            return Err(
                "damaged or not a shared library: it has no dynamic section (PT_DYNAMIC)".into(),
            );
        }
        let shoff: u64 = header.e_shoff(endian).into();
        if shoff != 0 {
            let need = shoff.saturating_add(
                u64::from(header.e_shnum(endian)) * size_of::<H::SectionHeader>() as u64,
            );
            if need > len || bytes.read_bytes_at(shoff, 1).is_err() {
                return Err(truncated("the section header table", need, len));
            }
            header
                .section_headers(endian, bytes)
                .map_err(|err| format!("damaged section header table: {err}"))?;
        }
        Ok(())
    }

    fn truncated(what: &str, need: u64, len: u64) -> String {
        format!("truncated: {what} needs bytes up to {need}, the file has {len} {TRUNCATED_HINT}")
    }
}

#[cfg(all(
    test,
    unix,
    not(target_vendor = "apple"),
    target_pointer_width = "64",
    target_endian = "little"
))]
mod tests {
    use super::check_library_image;
    use object::Endianness;
    use object::elf::{FileHeader64, PT_LOAD};
    use object::read::elf::{FileHeader, ProgramHeader};

    /// A real shared object to damage: the test executable itself (a position-independent
    /// executable, `ET_DYN` with a dynamic section, like a plugin library).
    fn image() -> Vec<u8> {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        check_library_image(&bytes).expect("the test executable passes the check");
        bytes
    }

    /// End of the last `PT_LOAD` segment in the file, and the start of its file range.
    fn last_load(bytes: &[u8]) -> (u64, u64) {
        let h = FileHeader64::<Endianness>::parse(bytes).unwrap();
        let endian = h.endian().unwrap();
        h.program_headers(endian, bytes)
            .unwrap()
            .iter()
            .filter(|p| p.p_type(endian) == PT_LOAD && p.p_filesz(endian) > 0)
            .map(|p| {
                let (o, s) = p.file_range(endian);
                (o + s, o)
            })
            .max()
            .unwrap()
    }

    #[test]
    fn a_file_cut_inside_a_loaded_segment_is_refused_with_the_sizes() {
        let bytes = image();
        let (end, start) = last_load(&bytes);
        let cut = ((start + end) / 2) as usize;
        let err = check_library_image(&bytes[..cut]).unwrap_err();
        assert!(err.starts_with("truncated: loaded segment"), "{err}");
        assert!(err.contains(&format!("needs bytes up to {end}")), "{err}");
        assert!(err.contains(&format!("the file has {cut}")), "{err}");
    }

    #[test]
    fn a_file_cut_after_its_segments_is_refused_for_its_section_headers() {
        let bytes = image();
        let h = FileHeader64::<Endianness>::parse(&bytes[..]).unwrap();
        let shoff = h.e_shoff(h.endian().unwrap());
        if shoff == 0 {
            return; // stripped of section headers: nothing to cut
        }
        let cut = bytes.len() - 1;
        let err = check_library_image(&bytes[..cut]).unwrap_err();
        assert!(err.contains("section header table"), "{err}");
    }

    #[test]
    fn damaged_headers_and_other_files_are_refused() {
        let mut bytes = image();
        assert!(check_library_image(&[]).unwrap_err().contains("empty"));
        assert!(
            check_library_image(b"this is not a shared library")
                .unwrap_err()
                .contains("not an ELF")
        );
        // A header cut short.
        assert!(check_library_image(&bytes[..20]).is_err());
        // Program headers pointing past the end of the file.
        let phoff_at = 32; // e_phoff in a 64-bit ELF header
        bytes[phoff_at..phoff_at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let err = check_library_image(&bytes).unwrap_err();
        assert!(err.contains("program header table"), "{err}");
        // A zeroed header.
        bytes[..64].fill(0);
        assert!(
            check_library_image(&bytes)
                .unwrap_err()
                .contains("not an ELF")
        );
        // Every prefix of a valid library is refused (never read out of bounds).
        let full = image();
        for n in (0..full.len()).step_by(full.len() / 97 + 1) {
            assert!(
                check_library_image(&full[..n]).is_err(),
                "prefix of {n} bytes"
            );
        }
    }
}
