//! A raw disk image file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes per sector (virtio-blk's unit, whatever the block size).
pub const SECTOR_SIZE: u64 = 512;

/// Errors opening an image (host-facing, one line each).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// open(2) failed.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The path is not a regular file.
    #[error("disk image {0} is not a regular file")]
    NotRegular(PathBuf),
    /// Read-write access asked for an image nobody may write.
    #[error("disk image {0} is read-only (no write permission): add readonly=on")]
    ReadOnly(PathBuf),
    /// Another process holds a conflicting lock on the image (another VMM using it).
    #[error("disk image {0} is in use by another process (locked{1})")]
    Locked(PathBuf, &'static str),
    /// The image is smaller than one sector.
    #[error("disk image {0} is smaller than one 512-byte sector")]
    TooSmall(PathBuf),
}

/// A raw image: sectors map 1:1 to file bytes.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    sectors: u64,
    readonly: bool,
}

impl DiskImage {
    /// Opens `path` (read-only when `readonly`). An image whose permission bits allow
    /// nobody to write is refused read-write even to root, as a user would expect.
    pub fn open(path: &Path, readonly: bool) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        if !meta.is_file() {
            return Err(DiskError::NotRegular(path.to_path_buf()));
        }
        if !readonly && meta.mode() & 0o222 == 0 {
            return Err(DiskError::ReadOnly(path.to_path_buf()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(open_err)?;
        Self::lock(&file, path, readonly)?;
        Self::from_file(file, path, readonly)
    }

    /// Locks the image for as long as it is open: exclusively for read-write use, shared for
    /// read-only use, so two VMMs never write one image and nobody writes an image another
    /// reads (flock(2), released when the descriptor closes).
    fn lock(file: &File, path: &Path, readonly: bool) -> Result<(), DiskError> {
        let (op, what) = if readonly {
            (libc::LOCK_SH, "")
        } else {
            (libc::LOCK_EX, " against writers")
        };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let what = if readonly { " for writing" } else { what };
            Err(DiskError::Locked(path.to_path_buf(), what))
        } else {
            Err(DiskError::Open {
                path: path.to_path_buf(),
                source: e,
            })
        }
    }

    /// Wraps an open file (e.g. a memfd in tests).
    pub fn from_file(file: File, path: &Path, readonly: bool) -> Result<Self, DiskError> {
        let len = file
            .metadata()
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let sectors = len / SECTOR_SIZE;
        if sectors == 0 {
            return Err(DiskError::TooSmall(path.to_path_buf()));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            sectors,
            readonly,
        })
    }

    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The 20-byte device ID (VIRTIO_BLK_T_GET_ID): the image's file name, truncated.
    pub fn id(&self) -> [u8; 20] {
        let mut id = [0u8; 20];
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = name.len().min(id.len());
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        id
    }

    /// preadv(2) until `iov` is full; an early end of file is an error.
    pub fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        self.vectored(iov, offset, false)
    }

    /// pwritev(2) until `iov` is consumed.
    pub fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        self.vectored(iov, offset, true)
    }

    fn vectored(
        &self,
        mut iov: &mut [libc::iovec],
        mut offset: u64,
        write: bool,
    ) -> io::Result<()> {
        const IOV_MAX: usize = 1024;
        while !iov.is_empty() {
            let n = iov.len().min(IOV_MAX);
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: every iovec points into guest memory the caller resolved through
            // vm-memory and keeps mapped; the count is bounded by the slice.
            let r = unsafe {
                if write {
                    libc::pwritev(self.file.as_raw_fd(), iov.as_ptr(), n as i32, off)
                } else {
                    libc::preadv(self.file.as_raw_fd(), iov.as_ptr(), n as i32, off)
                }
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            offset += r as u64;
            // Drop what was transferred.
            let mut done = r as usize;
            while done > 0 {
                let first = &mut iov[0];
                if done >= first.iov_len {
                    done -= first.iov_len;
                    iov = &mut iov[1..];
                } else {
                    // SAFETY: advancing within the same buffer.
                    first.iov_base = unsafe { first.iov_base.cast::<u8>().add(done) }.cast();
                    first.iov_len -= done;
                    done = 0;
                }
            }
            while iov.first().is_some_and(|v| v.iov_len == 0) {
                iov = &mut iov[1..];
            }
        }
        Ok(())
    }

    /// fdatasync(2).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset` (they read back as zeros).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes `len` bytes at `offset`: punches a hole when `unmap`, else zero-range,
    /// falling back to writing zeros where the file system has neither.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let zeros = vec![0u8; 64 * 1024];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64) as usize;
                    self.file.write_all_at(&zeros[..n], offset + done)?;
                    done += n as u64;
                }
                Ok(())
            }
            r => r,
        }
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: plain syscall on an owned descriptor.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
