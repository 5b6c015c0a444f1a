//! Reading a stored tensor's bytes into memory the loader owns (a pinned staging buffer or a
//! host tensor).
//!
//! Three ways, chosen by `PHYAI_LOAD_READ`:
//! - `pread` (default): positioned reads from the file in 4 MiB pieces on the rayon pool.
//!   The kernel copies from the page cache straight into the destination; no page of the
//!   file is mapped into the process, so there are no page faults and no page-table
//!   contention between the threads.
//! - `mmap`: the same pieces copied out of the memory map (every first touch of a page is a
//!   fault). Kept to compare the ways on a given machine.
//! - `direct`: the same pieces read with `O_DIRECT` (Linux), around the page cache, through
//!   an aligned bounce buffer per thread: for machines whose page cache cannot keep a
//!   checkpoint, where every load comes from the disk anyway. Files that refuse `O_DIRECT`
//!   are read with `pread`.
//!
//! [`resident_bytes`] says how much of a mapped file is already in the page cache, so a
//! load can report whether it was served from memory or from the disk.

use std::fs::File;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

use rayon::prelude::*;

/// Bytes per parallel piece: large enough that each read is one long kernel copy, small
/// enough that a 64 MiB stage spreads over 16 threads.
const PIECE: usize = 4 << 20;

/// How the loader reads tensor bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    Pread,
    Mmap,
    Direct,
}

impl ReadMode {
    /// From `PHYAI_LOAD_READ` (`pread`, the default, `mmap` or `direct`), read once per
    /// process.
    pub fn from_env() -> Self {
        static MODE: OnceLock<ReadMode> = OnceLock::new();
        *MODE.get_or_init(|| {
            match std::env::var("PHYAI_LOAD_READ")
                .map(|v| v.trim().to_ascii_lowercase())
                .as_deref()
            {
                Ok("mmap") => ReadMode::Mmap,
                Ok("direct") => ReadMode::Direct,
                _ => ReadMode::Pread,
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ReadMode::Pread => "pread",
            ReadMode::Mmap => "mmap",
            ReadMode::Direct => "direct",
        }
    }
}

/// One stored tensor: its bytes in the file's memory map, and where they start in the file.
#[derive(Clone, Copy)]
pub struct StoredBytes<'a> {
    pub file: &'a File,
    /// The same file opened with `O_DIRECT` on first use by [`ReadMode::Direct`] (`None`
    /// inside when the file system refuses it).
    pub direct: &'a DirectHandle,
    /// Offset of `map[0]` in the file.
    pub offset: u64,
    pub map: &'a [u8],
}

impl StoredBytes<'_> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes `range` of these bytes (within bounds; the caller checked them).
    pub fn sub(&self, range: std::ops::Range<usize>) -> Self {
        StoredBytes {
            file: self.file,
            direct: self.direct,
            offset: self.offset + range.start as u64,
            map: &self.map[range],
        }
    }

    /// Fills `dst` with the tensor's bytes `start..start + dst.len()`, in parallel pieces.
    pub fn read_into(&self, start: usize, dst: &mut [u8], mode: ReadMode) -> std::io::Result<()> {
        let end = start + dst.len();
        if end > self.map.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("bytes {start}..{end} of a {}-byte tensor", self.map.len()),
            ));
        }
        dst.par_chunks_mut(PIECE)
            .enumerate()
            .try_for_each(|(i, d)| {
                let at = start + i * PIECE;
                match mode {
                    ReadMode::Mmap => {
                        d.copy_from_slice(&self.map[at..at + d.len()]);
                        Ok(())
                    }
                    ReadMode::Pread => pread_exact(self.file, d, self.offset + at as u64),
                    ReadMode::Direct => match self.direct.get() {
                        Some(f) => pread_direct(f, d, self.offset + at as u64),
                        None => pread_exact(self.file, d, self.offset + at as u64),
                    },
                }
            })
    }
}

/// Bytes for the loader to copy from: a stored tensor, or bytes already in host memory (a
/// tensor-parallel slice gathered from the map).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Stored(StoredBytes<'a>, ReadMode),
    Host(&'a [u8]),
}

impl Source<'_> {
    pub fn len(&self) -> usize {
        match self {
            Source::Stored(s, _) => s.len(),
            Source::Host(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `dst` with bytes `start..start + dst.len()`, in parallel pieces.
    pub fn read_into(&self, start: usize, dst: &mut [u8]) -> std::io::Result<()> {
        match *self {
            Source::Stored(s, mode) => s.read_into(start, dst, mode),
            Source::Host(b) => {
                let src = b.get(start..start + dst.len()).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("bytes {start}.. of {} in memory", b.len()),
                    )
                })?;
                dst.par_chunks_mut(PIECE)
                    .zip(src.par_chunks(PIECE))
                    .for_each(|(d, s)| d.copy_from_slice(s));
                Ok(())
            }
        }
    }
}

#[cfg(unix)]
fn pread_exact(file: &File, dst: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, dst, at)
}

#[cfg(not(unix))]
fn pread_exact(file: &File, dst: &mut [u8], at: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(dst)
}

/// A host tensor holding `src`'s bytes as they are stored (`dtype` is the stored dtype),
/// read straight into the tensor's buffer.
pub(crate) fn host_tensor(src: Source<'_>, dtype: DType, shape: &[usize]) -> crate::Result<Tensor> {
    let n: usize = shape.iter().product();
    if n * dtype.size_in_bytes() != src.len() {
        return Err(crate::Error::msg(format!(
            "{} bytes for {shape:?} of {dtype:?}",
            src.len()
        )));
    }
    fn read<T: candle_core::WithDType + Default>(
        src: Source<'_>,
        n: usize,
        shape: &[usize],
    ) -> crate::Result<Tensor> {
        let mut v = vec![T::default(); n];
        // SAFETY: T is a plain number type: any bytes are a valid value, and the view
        // covers exactly the vector's initialised elements.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, n * std::mem::size_of::<T>())
        };
        src.read_into(0, bytes)
            .map_err(|e| crate::Error::msg(e.to_string()))?;
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }
    match dtype {
        DType::BF16 => read::<half::bf16>(src, n, shape),
        DType::F16 => read::<half::f16>(src, n, shape),
        DType::F32 => read::<f32>(src, n, shape),
        _ => match src {
            Source::Stored(s, _) => Ok(Tensor::from_raw_buffer(s.map, dtype, shape, &Device::Cpu)?),
            Source::Host(b) => Ok(Tensor::from_raw_buffer(b, dtype, shape, &Device::Cpu)?),
        },
    }
}

/// A file's `O_DIRECT` handle, opened on first use.
pub struct DirectHandle {
    path: std::path::PathBuf,
    file: OnceLock<Option<File>>,
}

impl DirectHandle {
    pub fn new(path: &std::path::Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: OnceLock::new(),
        }
    }

    fn get(&self) -> Option<&File> {
        self.file.get_or_init(|| open_direct(&self.path)).as_ref()
    }
}

/// `file` opened again with `O_DIRECT`; `None` where the system or file system refuses.
#[cfg(target_os = "linux")]
pub fn open_direct(path: &std::path::Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
pub fn open_direct(_path: &std::path::Path) -> Option<File> {
    None
}

/// Block alignment of `O_DIRECT` reads (offsets, lengths and buffer addresses).
const DIRECT_ALIGN: usize = 4096;

/// A heap buffer aligned for `O_DIRECT`, one per thread, kept for the process.
struct Bounce {
    ptr: *mut u8,
    len: usize,
}

impl Bounce {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, DIRECT_ALIGN).expect("aligned layout")
    }

    fn with_len(len: usize) -> Self {
        // SAFETY: a non-zero size (len ≥ one block) with a power-of-two alignment.
        let ptr = unsafe { std::alloc::alloc(Self::layout(len)) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(Self::layout(len));
        }
        Self { ptr, len }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_len` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) };
    }
}

thread_local! {
    static BOUNCE: std::cell::RefCell<Option<Bounce>> = const { std::cell::RefCell::new(None) };
}

/// `dst.len()` bytes at `at` through an `O_DIRECT` handle: the aligned blocks around them
/// into this thread's bounce buffer, then the wanted bytes out of it.
fn pread_direct(file: &File, dst: &mut [u8], at: u64) -> std::io::Result<()> {
    let align = DIRECT_ALIGN as u64;
    let start = at / align * align;
    let head = (at - start) as usize;
    let need = head + dst.len();
    let len = need.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    BOUNCE.with(|b| {
        let mut b = b.borrow_mut();
        if b.as_ref().is_none_or(|x| x.len < len) {
            *b = Some(Bounce::with_len(len.max(PIECE + 2 * DIRECT_ALIGN)));
        }
        let bounce = b.as_mut().expect("bounce buffer");
        // SAFETY: the buffer holds at least `len` bytes and only this thread uses it.
        let buf = unsafe { std::slice::from_raw_parts_mut(bounce.ptr, len) };
        let mut got = 0;
        while got < need {
            // Block-aligned offset, length and address; only the file's end cuts a read
            // short of whole blocks, so a partial block means there is nothing more.
            let n = read_at(file, &mut buf[got..len], start + got as u64)?;
            got += n;
            if got < need && (n == 0 || got % DIRECT_ALIGN != 0) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ends before byte {}", at + dst.len() as u64),
                ));
            }
        }
        dst.copy_from_slice(&buf[head..need]);
        Ok(())
    })
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, at)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(at))?;
    f.read(buf)
}

/// How many bytes of `map` (a whole-file mapping) are in the page cache now; `None` where
/// the system cannot say.
#[cfg(target_os = "linux")]
pub fn resident_bytes(map: &[u8]) -> Option<u64> {
    if map.is_empty() {
        return Some(0);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page <= 0 {
        return None;
    }
    let page = page as usize;
    let pages = map.len().div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` starts on a page boundary (it is a whole mapping) and `vec` has one
    // byte per page of it.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), vec.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    let whole = vec.iter().filter(|&&b| b & 1 == 1).count() as u64;
    // The last page may be partial; count it as what it holds.
    let tail = (pages * page - map.len()) as u64;
    let last_in = vec.last().is_some_and(|&b| b & 1 == 1);
    Some(whole * page as u64 - if last_in { tail } else { 0 })
}

#[cfg(not(target_os = "linux"))]
pub fn resident_bytes(_map: &[u8]) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pread_and_mmap_read_the_same_bytes_at_every_offset() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let head = 77usize;
        let len = 2 * PIECE + 12_345;
        let data: Vec<u8> = (0..head + len).map(|i| (i * 131 + i / 7) as u8).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        let file = File::open(f.path()).unwrap();
        // SAFETY: a private read-only map of a file this test owns.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let handle = DirectHandle::new(f.path());
        let direct = open_direct(f.path());
        let t = StoredBytes {
            file: &file,
            direct: &handle,
            offset: head as u64,
            map: &map[head..],
        };
        for (start, n) in [(0, len), (1, PIECE), (PIECE - 3, PIECE + 9), (len - 5, 5)] {
            for mode in [ReadMode::Pread, ReadMode::Mmap, ReadMode::Direct] {
                let mut dst = vec![0u8; n];
                t.read_into(start, &mut dst, mode).unwrap();
                assert!(
                    dst == data[head + start..head + start + n],
                    "{mode:?} at {start}+{n}"
                );
            }
        }
        let mut dst = vec![0u8; 6];
        let e = t.read_into(len - 5, &mut dst, ReadMode::Pread).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        // The aligned reads themselves, wherever the file system takes O_DIRECT.
        if let Some(d) = &direct {
            for (at, n) in [
                (0u64, 10usize),
                (4095, 2),
                (77, PIECE + 4097),
                ((head + len - 3) as u64, 3),
            ] {
                let mut dst = vec![0u8; n];
                pread_direct(d, &mut dst, at).unwrap();
                assert!(
                    dst == data[at as usize..at as usize + n],
                    "direct at {at}+{n}"
                );
            }
            let mut past = vec![0u8; 4];
            let e = pread_direct(d, &mut past, (head + len - 2) as u64).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_just_written_is_resident() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![3u8; 3 * 4096 + 100]).unwrap();
        f.flush().unwrap();
        let file = File::open(f.path()).unwrap();
        // SAFETY: a private read-only map of a file this test owns.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        // Freshly written pages sit in the page cache (tmpfs or disk-backed alike).
        assert_eq!(resident_bytes(&map), Some(3 * 4096 + 100));
    }
}
